//! `GET /openapi.json`: the API described as OpenAPI 3.0, written by hand next to the
//! routes it describes (a test checks that every route is in it).

use axum::Json;
use serde_json::{json, Value};

pub async fn document() -> Json<Value> {
    Json(spec())
}

fn error_responses(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        out.insert(
            (*code).to_owned(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(out)
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

fn ok(status: &str, description: &str, schema: Value, errors: &[&str]) -> Value {
    with(
        json!({ status: {"description": description, "content": {"application/json": {"schema": schema}}}}),
        error_responses(errors),
    )
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// The usage API's paths (metering; see `wake_api::usage` for the shapes).
fn usage_paths() -> Value {
    let time = |name: &str| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string", "format": "date-time"}});
    let object = json!({"type": "object"});
    json!({
        "endpoint": {
            "parameters": [
                {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                time("from"), time("to"),
                {"name": "granularity", "in": "query", "required": false, "schema": {"type": "string", "enum": ["hour", "day"], "default": "hour"}}
            ],
            "get": {"summary": "Metered usage in hour or day buckets (UTC): active and CU seconds, traffic, queries, sessions, storage, cost with prices set; never wakes the compute", "responses": ok("200", "usage", object.clone(), &["400", "401", "404"])}
        },
        "summary": {
            "parameters": [time("from"), time("to")],
            "get": {"summary": "Usage per endpoint over a range (deleted endpoints included)", "responses": ok("200", "usage", object.clone(), &["400", "401"])}
        },
        "events": {
            "parameters": [
                {"name": "after", "in": "query", "required": false, "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
            ],
            "get": {"summary": "Consumption events in Neon's format after a cursor, oldest first", "responses": ok("200", "events", object, &["400", "401"])}
        }
    })
}

/// Autoscaling's schemas (`wake_api::admin::{ComputeSize, Resize}`), added to the components
/// by [`spec`] (one `json!` of everything would exceed the macro's recursion limit).
fn size_schemas() -> Value {
    json!({
        "ComputeSize": {"type": "object", "description": "how current_cu is in effect on the running compute (absent while it does not run)", "properties": {
            "limits": {"type": "string", "description": "cgroup v1, cgroup v2, or not enforced: <why>"},
            "cpu_max": {"type": "string", "description": "<quota_us> <period_us>"}, "memory_limit_bytes": {"type": "integer"},
            "settings": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "value": {"type": "string", "description": "in effect"},
                "pending": {"type": "string", "description": "what the next start applies (restart-only settings that differ)"}}}},
            "pooler_pool_size": {"type": "integer"}, "gateway_pool_max_conns": {"type": "integer"}}},
        "Resize": {"type": "object", "required": ["cu"], "additionalProperties": false, "properties": {"cu": {"type": "number", "description": "0.25 steps, up to --max-cu"}}},
        "RailwayService": {"type": "object", "required": ["project_id", "environment_id", "service_id"], "additionalProperties": false,
            "description": "An existing Railway Postgres service (and its PgBouncer service) a railway endpoint is bound to",
            "properties": {"project_id": {"type": "string"}, "environment_id": {"type": "string"},
                "service_id": {"type": "string"}, "pooler_service_id": {"type": "string"}}}
    })
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

pub fn spec() -> Value {
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let endpointish = json!({"name": "endpointish", "in": "query", "required": true, "schema": {"type": "string"}, "description": "endpoint id, or `<id>-pooler` for its PgBouncer"});
    let mut spec = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "wake-service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Control plane: endpoints, roles, databases and compute lifecycle. `/v1` needs the admin token; `/proxy/api/v1` (Neon-compatible) accepts the admin or the proxy token.",
            "license": {"name": "Apache-2.0"}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "State": {"type": "string", "enum": ["active", "suspending", "suspended", "resuming", "failed"]},
                "Addresses": {"type": "object", "properties": {"direct": {"type": "string"}, "pooler": {"type": "string"}}},
                "Database": {"type": "object", "properties": {"name": {"type": "string"}, "owner": {"type": "string"}}},
                "Endpoint": {"type": "object", "properties": {
                    "id": {"type": "string"}, "state": schema("State"), "operation": {"type": "string", "nullable": true},
                    "suspend_timeout_seconds": {"type": "integer"}, "min_cu": {"type": "number"}, "max_cu": {"type": "number"},
                    "current_cu": {"type": "number"}, "driver": {"type": "string"}, "addresses": schema("Addresses"),
                    "roles": {"type": "array", "items": {"type": "string"}}, "databases": {"type": "array", "items": schema("Database")},
                    "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
                    "last_active": {"type": "string", "format": "date-time", "nullable": true},
                    "suspended_at": {"type": "string", "format": "date-time", "nullable": true},
                    "size": schema("ComputeSize"), "railway": schema("RailwayService")}},
                "CreateEndpoint": {"type": "object", "required": ["id"], "additionalProperties": false, "properties": {
                    "id": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,62}$"},
                    "suspend_timeout_seconds": {"type": "integer", "description": "-1 never, 0 default (300), up to 604800"},
                    "min_cu": {"type": "number"}, "max_cu": {"type": "number"},
                    "driver": {"type": "string", "enum": ["local", "railway"], "description": "default local; railway needs `railway` and a wake service started with RAILWAY_API_TOKEN"},
                    "railway": schema("RailwayService")}},
                "PatchEndpoint": {"type": "object", "additionalProperties": false, "properties": {
                    "suspend_timeout_seconds": {"type": "integer"}, "min_cu": {"type": "number"}, "max_cu": {"type": "number"}}},
                "CreateRole": {"type": "object", "required": ["name", "password"], "additionalProperties": false, "properties": {"name": {"type": "string"}, "password": {"type": "string"}}},
                "PatchRole": {"type": "object", "required": ["password"], "additionalProperties": false, "properties": {"password": {"type": "string"}}},
                "Role": {"type": "object", "properties": {"name": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}}},
                "CreateDatabase": {"type": "object", "required": ["name", "owner"], "additionalProperties": false, "properties": {"name": {"type": "string"}, "owner": {"type": "string"}}},
                "JwksSettings": {"type": "object", "required": ["id", "jwks_url", "provider_name", "role_names"], "properties": {
                    "id": {"type": "string"}, "jwks_url": {"type": "string", "description": "empty when the set is inline (jwks)"}, "provider_name": {"type": "string"},
                    "jwt_audience": {"type": "string", "nullable": true}, "role_names": {"type": "array", "items": {"type": "string"}},
                    "jwt_issuer": {"type": "string"}, "algorithms": {"type": "array", "items": {"type": "string"}}, "jwks": {"type": "object"}}},
                "CreateJwks": {"type": "object", "required": ["provider_name"], "additionalProperties": false, "description": "exactly one of jwks_url and jwks", "properties": {
                    "provider_name": {"type": "string", "minLength": 1, "maxLength": 64},
                    "jwks_url": {"type": "string", "description": "http(s), with a host; no user info, query or fragment"},
                    "jwks": {"type": "object", "description": "an inline key set {\"keys\": [...]}, at most 64 KiB"},
                    "jwt_audience": {"type": "string"}, "jwt_issuer": {"type": "string"},
                    "algorithms": {"type": "array", "items": {"type": "string", "enum": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]}, "description": "default RS256, ES256, EdDSA"},
                    "role_names": {"type": "array", "items": {"type": "string"}, "description": "default [\"authenticated\", \"anonymous\"]; not API roles, cloud_admin or pg_*"}}},
                "JwksList": {"type": "object", "properties": {"jwks": {"type": "array", "items": schema("JwksSettings")}}},
                "WakeCompute": {"type": "object", "properties": {"address": {"type": "string"}, "server_name": {"type": "string", "nullable": true}, "aux": {"type": "object", "properties": {
                    "endpoint_id": {"type": "string"}, "project_id": {"type": "string"}, "branch_id": {"type": "string"}, "compute_id": {"type": "string"},
                    "cold_start_info": {"type": "string", "enum": ["warm", "pool_hit", "pool_miss", "unknown"]}}},
                    "pool_max_conns": {"type": "integer", "description": "not in Neon's API: the gateway's cap on direct connections for the compute's size"}}},
                "AccessControl": {"type": "object", "properties": {"role_secret": {"type": "string"}, "project_id": {"type": "string", "nullable": true}, "allowed_ips": {"type": "array", "nullable": true, "items": {"type": "string"}}}},
                "Jwks": {"type": "object", "properties": {"jwks": {"type": "array", "items": schema("JwksSettings")},
                    "jwt_login": {"type": "object", "description": "present when there are rules: {claims_key: {kid, key (64 hex)}, roles: [{name, secret (SCRAM verifier), client_key (base64)}]}"}}},
                "ComputeEvent": {"type": "object", "required": ["at", "kind"], "properties": {
                    "at": {"type": "string", "format": "date-time"}, "kind": {"type": "string"},
                    "from_state": {"type": "string", "nullable": true}, "to_state": {"type": "string", "nullable": true},
                    "cu": {"type": "number", "nullable": true}, "detail": {"type": "string", "nullable": true}}},
                "ActivityReport": {"type": "object", "required": ["interval_ms", "endpoints"], "properties": {
                    "interval_ms": {"type": "integer", "minimum": 50, "maximum": 60000},
                    "endpoints": {"type": "array", "items": {"type": "object", "required": ["endpoint_id", "sessions", "in_flight", "idle_ms"], "properties": {
                        "endpoint_id": {"type": "string"}, "sessions": {"type": "integer"}, "in_flight": {"type": "integer"}, "idle_ms": {"type": "integer"}}}},
                    "cached": {"type": "array", "items": {"type": "string"}},
                    "gateway_id": {"type": "string", "description": "random per gateway process; the wake service waits for it to apply role changes"},
                    "role_changes_applied": {"type": "integer", "description": "the newest role change applied (an earlier reply's role_changes_cursor)"}}},
                "ActivityReply": {"type": "object", "properties": {"inactive": {"type": "array", "items": {"type": "string"}},
                    "role_changes": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}, "endpoint_id": {"type": "string"}, "role": {"type": "string"}}}},
                    "role_changes_cursor": {"type": "integer"}, "role_changes_truncated": {"type": "boolean"},
                    "pool_limits": {"type": "array", "items": {"type": "object", "properties": {"endpoint_id": {"type": "string"}, "pool_max_conns": {"type": "integer"}}}}}},
                "ControlPlaneError": {"type": "object", "description": "Neon's error shape: {error, status: {code, message, details: {error_info: {reason}, retry_info: {retry_delay_ms, wake_budget_ms?}, user_facing_message: {message}}}}"}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/endpoints": {
                "get": {"summary": "List endpoints", "responses": ok("200", "endpoints", json!({"type": "array", "items": schema("Endpoint")}), &["401", "503"])},
                "post": {"summary": "Create an endpoint and start its compute", "requestBody": body("CreateEndpoint"), "responses": ok("201", "created", schema("Endpoint"), &["400", "401", "409", "422", "503"])}
            },
            "/v1/endpoints/{id}": {
                "parameters": id,
                "get": {"summary": "One endpoint", "responses": ok("200", "endpoint", schema("Endpoint"), &["401", "404"])},
                "patch": {"summary": "Change settings", "requestBody": body("PatchEndpoint"), "responses": ok("200", "updated", schema("Endpoint"), &["400", "401", "404", "422"])},
                "delete": {"summary": "Delete the endpoint and its data", "responses": with(json!({"204": {"description": "deleted"}}), error_responses(&["401", "404", "503"]))}
            },
            "/v1/endpoints/{id}/roles": {
                "parameters": id,
                "post": {"summary": "Create a login role (password stored only as a SCRAM-SHA-256 secret)", "requestBody": body("CreateRole"), "responses": ok("201", "created", schema("Role"), &["400", "401", "404", "409", "422", "503"])}
            },
            "/v1/endpoints/{id}/roles/{name}": {
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}
                ],
                "patch": {"summary": "Set a role's password; answers once Postgres, PgBouncer and every gateway that reports refuse the old one", "requestBody": body("PatchRole"), "responses": ok("200", "updated", schema("Role"), &["400", "401", "404", "422", "503"])},
                "delete": {"summary": "Drop a role (409 while it owns a database); what it owns in each database goes to that database's owner", "responses": with(json!({"204": {"description": "dropped"}}), error_responses(&["401", "404", "409", "503"]))}
            },
            "/v1/endpoints/{id}/databases": {
                "parameters": id,
                "post": {"summary": "Create a database", "requestBody": body("CreateDatabase"), "responses": ok("201", "created", schema("Database"), &["400", "401", "404", "409", "422", "503"])}
            },
            "/v1/endpoints/{id}/jwks": {
                "parameters": id,
                "get": {"summary": "The endpoint's JWKS rules, oldest first", "responses": ok("200", "rules", schema("JwksList"), &["401", "404"])},
                "post": {"summary": "Add a JWKS rule (at most 10); wakes the endpoint and prepares its databases (JWT roles, the auth schema) before answering", "requestBody": body("CreateJwks"), "responses": ok("201", "created", schema("JwksSettings"), &["400", "401", "404", "409", "503"])}
            },
            "/v1/endpoints/{id}/jwks/{jwks_id}": {
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "jwks_id", "in": "path", "required": true, "schema": {"type": "string"}}
                ],
                "delete": {"summary": "Delete a JWKS rule (its roles stay, reserved)", "responses": with(json!({"204": {"description": "deleted"}}), error_responses(&["401", "404"]))}
            },
            "/v1/endpoints/{id}/wake": {
                "parameters": id,
                "post": {"summary": "Start the compute if needed; blocks (bounded) until active", "responses": ok("200", "active", schema("Endpoint"), &["401", "404", "503"])}
            },
            "/v1/endpoints/{id}/suspend": {
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "force", "in": "query", "required": false, "schema": {"type": "boolean"}}
                ],
                "post": {"summary": "Stop the compute; refused (409) while a client is busy or holds a session through the gateway unless force=true (idle connections are closed)", "responses": ok("200", "suspended", schema("Endpoint"), &["400", "401", "404", "409", "503"])}
            },
            "/v1/endpoints/{id}/resize": {
                "parameters": id,
                "post": {"summary": "Set a fixed-size endpoint's size (min_cu = max_cu = cu), applied live to its running compute; 409 for an autoscaling or a suspended endpoint",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": schema("Resize")}}},
                    "responses": ok("200", "resized", schema("Endpoint"), &["400", "401", "404", "409", "422", "503"])}
            },
            "/v1/endpoints/{id}/events": {
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}}
                ],
                "get": {"summary": "The compute's lifecycle events (newest `limit`, oldest first)", "responses": ok("200", "events", json!({"type": "array", "items": schema("ComputeEvent")}), &["400", "401", "404", "422"])}
            },
            "/v1/endpoints/{id}/usage": usage_paths()["endpoint"].clone(),
            "/v1/usage": usage_paths()["summary"].clone(),
            "/v1/usage/events": usage_paths()["events"].clone(),
            "/proxy/api/v1/wake_compute": {
                "get": {"summary": "Neon-compatible: wake and return the address", "parameters": [endpointish.clone(),
                    {"name": "session_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "application_name", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "address", "content": {"application/json": {"schema": schema("WakeCompute")}}},
                                  "404": {"description": "ENDPOINT_NOT_FOUND", "content": {"application/json": {"schema": schema("ControlPlaneError")}}},
                                  "503": {"description": "retry per retry_info", "content": {"application/json": {"schema": schema("ControlPlaneError")}}}}}
            },
            "/proxy/api/v1/get_endpoint_access_control": {
                "get": {"summary": "Neon-compatible: the role's SCRAM secret (empty for an unknown role)", "parameters": [endpointish,
                    {"name": "role", "in": "query", "required": true, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "access control", "content": {"application/json": {"schema": schema("AccessControl")}}},
                                  "404": {"description": "ENDPOINT_NOT_FOUND", "content": {"application/json": {"schema": schema("ControlPlaneError")}}}}}
            },
            "/proxy/api/v1/endpoints/{id}/jwks": {
                "parameters": id,
                "get": {"summary": "Neon-compatible: the endpoint's JWKS rules, and jwt_login (this product's gateways) when it has any", "responses": {"200": {"description": "rules", "content": {"application/json": {"schema": schema("Jwks")}}},
                                  "404": {"description": "ENDPOINT_NOT_FOUND", "content": {"application/json": {"schema": schema("ControlPlaneError")}}}}}
            },
            "/proxy/api/v1/activity": {
                "post": {"summary": "A gateway's activity report (open sessions hold the endpoint awake); the reply lists the reported and cached endpoints that are not active", "requestBody": body("ActivityReport"),
                    "responses": {"200": {"description": "inactive endpoints", "content": {"application/json": {"schema": schema("ActivityReply")}}},
                                  "400": {"description": "malformed report", "content": {"application/json": {"schema": schema("ControlPlaneError")}}}}}
            },
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.0"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text format"}}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Readiness (state store reachable)", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}}
        }
    });
    if let (Some(schemas), Value::Object(more)) = (
        spec["components"]["schemas"].as_object_mut(),
        size_schemas(),
    ) {
        schemas.extend(more);
    }
    replica_fields(&mut spec["components"]["schemas"]);
    branch_api(&mut spec);
    spec
}

/// The branch routes and schemas (`wake_api::admin::{CreateBranch, Branch, …}`).
fn branch_api(spec: &mut Value) {
    let schemas = &mut spec["components"]["schemas"];
    let labels = json!({"type": "object", "additionalProperties": {"type": "string", "maxLength": 256}, "maxProperties": 16,
        "description": "keys of 1 to 63 of [A-Za-z0-9_.-]"});
    schemas["CreateBranch"] = json!({"type": "object", "required": ["from"], "additionalProperties": false, "properties": {
        "from": {"type": "string", "description": "a database of the endpoint (not postgres)"},
        "name": {"type": "string", "description": "the branch's database name; br_<12 hex> when absent"},
        "display_name": {"type": "string", "minLength": 1, "maxLength": 256, "description": "free-form; what Neon's API (/api/v2) shows as the branch's name; the name when absent"},
        "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 2_592_000, "description": "deleted this long after creation (within 1 s while the endpoint runs; at its next wake otherwise)"},
        "labels": labels.clone(),
        "data": {"type": "boolean", "default": true, "description": "false: the schema only (tenant tables emptied, sequences restarted)"}}});
    schemas["Branch"] = json!({"type": "object", "properties": {
        "name": {"type": "string"}, "display_name": {"type": "string"}, "endpoint": {"type": "string"}, "source": {"type": "string"}, "owner": {"type": "string"},
        "data": {"type": "boolean"}, "labels": labels,
        "created_at": {"type": "string", "format": "date-time"}, "copied_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time", "nullable": true},
        "connection_uris": {"type": "object", "properties": {"direct": {"type": "string"}, "pooled": {"type": "string"}},
            "description": "through the gateway (--public-domain, --public-port, --public-sslmode), as the owner, without a password"}}});
    let name = json!([
        {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
        {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}
    ]);
    let label = json!([
        {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
        {"name": "label", "in": "query", "required": false, "schema": {"type": "string"}, "description": "key=value"}
    ]);
    let paths = &mut spec["paths"];
    paths["/v1/endpoints/{id}/branches"] = json!({
        "parameters": label,
        "get": {"summary": "The endpoint's branches, oldest first (only those with the label, when given)", "responses": ok("200", "branches", json!({"type": "object", "properties": {"branches": {"type": "array", "items": schema("Branch")}}}), &["400", "401", "404"])},
        "post": {"summary": "Copy a database into a branch (CREATE DATABASE … TEMPLATE), waking the endpoint; the source's idle sessions end (57P01), one in a transaction is waited for (about 10 s), then 409", "requestBody": body("CreateBranch"), "responses": ok("201", "created", schema("Branch"), &["400", "401", "404", "409", "422", "503"])},
        "delete": {"summary": "Delete every branch with the label (required)", "responses": ok("200", "deleted", json!({"type": "object", "properties": {"deleted": {"type": "array", "items": {"type": "string"}}}}), &["400", "401", "404", "422", "503"])}
    });
    paths["/v1/endpoints/{id}/branches/{name}"] = json!({
        "parameters": name.clone(),
        "get": {"summary": "One branch", "responses": ok("200", "branch", schema("Branch"), &["401", "404"])},
        "delete": {"summary": "Delete a branch (its database dropped; its sessions end with 57P01)", "responses": with(json!({"204": {"description": "deleted"}}), error_responses(&["401", "404", "503"]))}
    });
    paths["/v1/endpoints/{id}/branches/{name}/reset"] = json!({
        "parameters": name,
        "post": {"summary": "Copy the source again (its current state), keeping the name, labels and expiry; the branch's sessions end with 57P01", "responses": ok("200", "reset", schema("Branch"), &["401", "404", "409", "503"])}
    });
}

/// The activity report's and reply's fields for several gateway replicas.
fn replica_fields(schemas: &mut Value) {
    schemas["ActivityReport"]["properties"]["peer"] = json!({"type": "object", "required": ["address", "cancel_tag"],
        "description": "where the other gateways forward cancel requests for this gateway's sessions (POST http://<address>/internal/cancel); needs gateway_id",
        "properties": {"address": {"type": "string", "maxLength": 255, "description": "host:port"},
            "cancel_tag": {"type": "integer", "minimum": 0, "maximum": 255}}});
    schemas["ActivityReply"]["properties"]["deleted"] = json!({"type": "array", "items": {"type": "string"},
        "description": "of inactive, the endpoints that no longer exist"});
    schemas["ActivityReply"]["properties"]["peers"] = json!({"type": "array", "items": {"type": "object", "properties": {
        "gateway_id": {"type": "string"}, "address": {"type": "string"}, "cancel_tag": {"type": "integer"}}}});
}
