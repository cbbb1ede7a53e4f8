//! The Railway double's contract (issue 18 groundwork): Railway's published schema
//! (`tests/fixtures/railway/schema.json`) loads, the requests the `railway` driver is to send
//! validate against it, and requests that drift from it (an unknown field, a wrong argument or
//! variable type, a missing required input, an unknown enum value) are refused with the
//! validator's message, as Railway would refuse them.

use serde_json::{json, Map, Value};

mod railway_double;
use railway_double::contract::{sdl_from_introspection, Checked, Contract};

fn vars(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

const LIMITS: &str = "mutation Limits($input: ServiceInstanceLimitsUpdateInput!) {
    serviceInstanceLimitsUpdate(input: $input)
}";
const SLEEP: &str = "mutation Sleep($service: String!, $environment: String!, $sleep: Boolean!) {
    serviceInstanceUpdate(serviceId: $service, environmentId: $environment,
                          input: { sleepApplication: $sleep })
}";
const DEPLOYMENTS: &str = "query Deployments($input: DeploymentListInput!) {
    deployments(input: $input, first: 1) { edges { node { id status createdAt } } }
}";
const METRICS: &str = "query Metrics($service: String!, $environment: String!, $since: DateTime!) {
    metrics(serviceId: $service, environmentId: $environment, startDate: $since,
            measurements: [CPU_USAGE, MEMORY_USAGE_GB, DISK_USAGE_GB], sampleRateSeconds: 30) {
        measurement values { ts value }
    }
}";

#[test]
fn the_drivers_requests_validate() {
    let contract = Contract::railway();
    let cases: [(&str, Value, Checked); 6] = [
        (
            LIMITS,
            json!({"input": {"serviceId": "svc", "environmentId": "env", "vCPUs": 0.25, "memoryGB": 1}}),
            Checked {
                mutation: true,
                root_fields: vec!["serviceInstanceLimitsUpdate".into()],
            },
        ),
        (
            SLEEP,
            json!({"service": "svc", "environment": "env", "sleep": true}),
            Checked {
                mutation: true,
                root_fields: vec!["serviceInstanceUpdate".into()],
            },
        ),
        (
            "mutation Stop($id: String!) { deploymentStop(id: $id) }",
            json!({"id": "dep"}),
            Checked {
                mutation: true,
                root_fields: vec!["deploymentStop".into()],
            },
        ),
        (
            "mutation Redeploy($id: String!) { deploymentRedeploy(id: $id) { id status } }",
            json!({"id": "dep"}),
            Checked {
                mutation: true,
                root_fields: vec!["deploymentRedeploy".into()],
            },
        ),
        (
            DEPLOYMENTS,
            json!({"input": {"serviceId": "svc", "environmentId": "env"}}),
            Checked {
                mutation: false,
                root_fields: vec!["deployments".into()],
            },
        ),
        (
            METRICS,
            json!({"service": "svc", "environment": "env", "since": "2026-12-06T00:00:00Z"}),
            Checked {
                mutation: false,
                root_fields: vec!["metrics".into()],
            },
        ),
    ];
    for (query, variables, want) in cases {
        let checked = contract.check(query, None, &vars(variables));
        assert_eq!(checked, Ok(want), "{query}");
    }
}

#[test]
fn drift_from_the_schema_is_refused() {
    let contract = Contract::railway();
    let cases: [(&str, &str, Value, &str); 8] = [
        ("an unknown field", "query { deployment(id: \"d\") { id stauts } }", json!({}), "stauts"),
        ("an unknown argument", "mutation { deploymentStop(id: \"d\", force: true) }", json!({}), "force"),
        ("a wrong argument type", "mutation { deploymentStop(id: 7) }", json!({}), "String"),
        ("a field without its selection", "query { deployment(id: \"d\") }", json!({}), "deployment"),
        (
            "an unknown enum value",
            "query { metrics(startDate: \"2026-12-06T00:00:00Z\", measurements: [CPU_PERCENT]) { measurement } }",
            json!({}),
            "CPU_PERCENT",
        ),
        (
            "a missing required input field",
            LIMITS,
            json!({"input": {"serviceId": "svc", "vCPUs": 1}}),
            "environmentId",
        ),
        (
            "a variable of the wrong type",
            LIMITS,
            json!({"input": {"serviceId": "svc", "environmentId": "env", "vCPUs": "two"}}),
            "vCPUs",
        ),
        ("a missing variable", SLEEP, json!({"service": "svc", "environment": "env"}), "sleep"),
    ];
    for (what, query, variables, names) in cases {
        let error = contract
            .check(query, None, &vars(variables))
            .expect_err(what);
        assert!(error.contains(names), "{what}: {error}");
    }
}

#[test]
fn introspection_becomes_sdl() {
    let introspection = json!({"__schema": {
        "queryType": {"name": "Query"}, "mutationType": null, "subscriptionType": null,
        "directives": [{"name": "skip", "locations": ["FIELD"], "args": []}],
        "types": [
            {"kind": "OBJECT", "name": "Query", "interfaces": [], "fields": [
                {"name": "items", "args": [
                    {"name": "first", "type": {"kind": "SCALAR", "name": "Int"}, "defaultValue": "10"},
                    {"name": "filter", "type": {"kind": "NON_NULL", "ofType": {"kind": "INPUT_OBJECT", "name": "Filter"}}, "defaultValue": null}
                ], "type": {"kind": "NON_NULL", "ofType": {"kind": "LIST", "ofType": {"kind": "NON_NULL", "ofType": {"kind": "OBJECT", "name": "Item"}}}}}
            ]},
            {"kind": "OBJECT", "name": "Item", "interfaces": [], "fields": [
                {"name": "kind", "args": [], "type": {"kind": "ENUM", "name": "Kind"}}
            ]},
            {"kind": "INPUT_OBJECT", "name": "Filter", "inputFields": [
                {"name": "kind", "type": {"kind": "ENUM", "name": "Kind"}, "defaultValue": "A"}
            ]},
            {"kind": "ENUM", "name": "Kind", "enumValues": [{"name": "A"}, {"name": "B"}]},
            {"kind": "SCALAR", "name": "String"},
            {"kind": "OBJECT", "name": "__Type", "fields": []}
        ]
    }});
    let sdl = sdl_from_introspection(&introspection).expect("sdl");
    assert!(
        sdl.contains("items(first: Int = 10, filter: Filter!): [Item!]!"),
        "{sdl}"
    );
    assert!(sdl.contains("input Filter {\n  kind: Kind = A\n}"), "{sdl}");
    assert!(sdl.contains("enum Kind { A B }"), "{sdl}");
    assert!(
        !sdl.contains("__Type") && !sdl.contains("scalar String") && !sdl.contains("@skip"),
        "{sdl}"
    );
    let contract = Contract::from_introspection(&introspection).expect("a valid schema");
    assert!(contract
        .check("{ items(filter: {}) { kind } }", None, &Map::new())
        .is_ok());
    assert!(
        contract
            .check("{ items { kind } }", None, &Map::new())
            .is_err(),
        "filter is required"
    );
}
