//! `POST /sql` end to end: an in-process gateway on real sockets in front of a real Postgres.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{driver_request, postgres, sql, TestGateway, CONN};
use tokio::io::AsyncWriteExt;

/// A table name unique to this test run and call site.
fn table(name: &str) -> String {
    format!("{name}_{}", std::process::id())
}

#[tokio::test]
async fn single_query_has_the_exact_result_shape() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let pg = postgres().client().await;
    let t = table("shape");
    pg.batch_execute(&format!(
        "CREATE TABLE {t} (id int4 PRIMARY KEY, name text)"
    ))
    .await
    .expect("create");
    pg.execute(&format!("INSERT INTO {t} VALUES (1, 'a'), (2, NULL)"), &[])
        .await
        .expect("insert");
    let table_oid: u32 = pg
        .query_one(&format!("SELECT '{t}'::regclass::oid"), &[])
        .await
        .expect("oid")
        .get(0);

    let (status, body) = sql(
        &gw,
        CONN,
        json!({"query": format!("SELECT id, name FROM {t} WHERE id >= $1 ORDER BY id"), "params": ["1"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "fields": [
                {"name": "id", "dataTypeID": 23, "tableID": table_oid, "columnID": 1,
                 "dataTypeSize": 4, "dataTypeModifier": -1, "format": "text"},
                {"name": "name", "dataTypeID": 25, "tableID": table_oid, "columnID": 2,
                 "dataTypeSize": -1, "dataTypeModifier": -1, "format": "text"}
            ],
            "rows": [["1", "a"], ["2", null]],
            "command": "SELECT",
            "rowCount": 2,
            "rowAsArray": true
        })
    );
    // The key order is part of the contract.
    let keys: Vec<String> = body.as_object().expect("object").keys().cloned().collect();
    assert_eq!(
        keys,
        ["fields", "rows", "command", "rowCount", "rowAsArray"]
    );

    let (_, body) = sql(
        &gw,
        CONN,
        json!({"query": format!("INSERT INTO {t} VALUES (3, 'c'), (4, 'd')")}),
    )
    .await;
    assert_eq!(
        (body["command"].clone(), body["rowCount"].clone()),
        (json!("INSERT"), json!(2))
    );
    assert_eq!(body["fields"], json!([]));
    let (_, body) = sql(
        &gw,
        CONN,
        json!({"query": format!("CREATE INDEX ON {t} (name)")}),
    )
    .await;
    assert_eq!(
        (body["command"].clone(), body["rowCount"].clone()),
        (json!("CREATE"), Value::Null)
    );
    // Untyped parameters are inferred by Postgres: `SELECT $1` is text.
    let (_, body) = sql(
        &gw,
        CONN,
        json!({"query": "SELECT $1 AS x", "params": [null]}),
    )
    .await;
    assert_eq!(body["fields"][0]["dataTypeID"], 25);
    assert_eq!(body["rows"], json!([[null]]));
    pg.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
    // Request and response bodies are metered per endpoint.
    let usage = gw.usage().await;
    assert!(usage["endpoints"]["db"]["ingress_bytes"].as_u64() > Some(100));
    assert!(usage["endpoints"]["db"]["egress_bytes"].as_u64() > Some(100));
    gw.stop().await;
}

#[tokio::test]
async fn typed_mode_and_object_rows_without_the_driver_headers() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let client = reqwest::Client::new();
    let body: Value = client
        .post(gw.sql_url())
        .header("Neon-Connection-String", CONN)
        .body(
            json!({"query": "SELECT 1::int2 AS a, true AS b, '{\"x\":[1,null]}'::jsonb AS c, 5::int8 AS d, \
                   '[0:1]={1,2}'::int4[] AS e, ARRAY['NaN','1.5']::float8[] AS f, 2.50::numeric AS g, \
                   ARRAY[ARRAY['a b',NULL],ARRAY['\"q\"','c']] AS h, NULL::int AS i"})
            .to_string(),
        )
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["rowAsArray"], false);
    assert_eq!(
        body["rows"],
        json!([{"a": 1, "b": true, "c": {"x": [1, null]}, "d": "5", "e": [1, 2],
                "f": ["NaN", 1.5], "g": "2.50", "h": [["a b", null], ["\"q\"", "c"]], "i": null}])
    );

    // A custom enum array is looked up in pg_type and still becomes a JSON array.
    let pg = postgres().client().await;
    let mood = table("mood");
    pg.batch_execute(&format!("CREATE TYPE {mood} AS ENUM ('sad', 'ok')"))
        .await
        .expect("create type");
    let body: Value = client
        .post(gw.sql_url())
        .header("Neon-Connection-String", CONN)
        .body(json!({"query": format!("SELECT ARRAY['ok','sad']::{mood}[] AS m, 'ok'::{mood} AS one")}).to_string())
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["rows"], json!([{"m": ["ok", "sad"], "one": "ok"}]));
    pg.batch_execute(&format!("DROP TYPE {mood}"))
        .await
        .expect("drop");

    // Per-query arrayMode overrides the header; raw mode keeps Postgres text.
    let (_, body) = sql(
        &gw,
        CONN,
        json!({"query": "SELECT true AS b", "arrayMode": false}),
    )
    .await;
    assert_eq!(body["rows"], json!([{"b": "t"}]));
    assert_eq!(body["rowAsArray"], false);
    gw.stop().await;
}

#[tokio::test]
async fn batches_run_in_one_transaction() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let pg = postgres().client().await;
    let t = table("batch");
    pg.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY)"))
        .await
        .expect("create");

    let (status, body) = sql(
        &gw,
        CONN,
        json!({"queries": [
            {"query": format!("INSERT INTO {t} VALUES ($1)"), "params": ["1"]},
            {"query": format!("SELECT count(*)::int AS n FROM {t}")},
            {"query": "SELECT txid_current_if_assigned() IS NOT NULL AS in_tx", "arrayMode": false}
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["command"], "INSERT");
    assert_eq!(results[1]["rows"], json!([["1"]]));
    assert_eq!(results[2]["rows"], json!([{"in_tx": "t"}]));

    // The second statement fails: the first one is rolled back and the error is returned.
    let (status, body) = sql(
        &gw,
        CONN,
        json!({"queries": [
            {"query": format!("INSERT INTO {t} VALUES (2)")},
            {"query": format!("INSERT INTO {t} VALUES (1)")}
        ]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "23505");
    assert_eq!(body["constraint"], format!("{t}_pkey"));
    let ids: Vec<i32> = pg
        .query(&format!("SELECT id FROM {t} ORDER BY id"), &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1]);

    let (status, body) = sql(&gw, CONN, json!({"queries": []})).await;
    assert_eq!((status, body), (200, json!({"results": []})));
    pg.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
    gw.stop().await;
}

/// Metering (`/usage`): the statements sent (each of a batch, a failing one too, not the
/// batch's own `START TRANSACTION`/`COMMIT`), the new backend connections (pool misses, not
/// reuses), direct and `-pooler` together under the endpoint's id.
#[tokio::test]
async fn usage_counts_statements_sent_and_new_connections_per_endpoint() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .route_to_postgres("db-pooler")
        .start()
        .await;
    let pooler = "postgres://postgres:postgres@db-pooler.localtest.me/main";
    let statements = |n: usize| {
        let queries: Vec<Value> = (0..n)
            .map(|i| json!({"query": format!("SELECT {i}")}))
            .collect();
        json!({ "queries": queries })
    };
    for (conn, body) in [
        (CONN, json!({"query": "SELECT 1"})),
        (pooler, statements(3)),
        (CONN, json!({"query": "SELECT 2"})),
        (CONN, json!({"queries": []})),
    ] {
        let (status, body) = sql(&gw, conn, body).await;
        assert_eq!(status, 200, "{body}");
    }
    // The second statement fails: two were sent, the third never.
    let failing = json!({"queries": [
        {"query": "SELECT 1"}, {"query": "SELECT 1/0"}, {"query": "SELECT 3"}
    ]});
    let (status, body) = sql(&gw, pooler, failing).await;
    assert_eq!((status, &body["code"]), (400, &json!("22012")), "{body}");

    let usage = gw.usage().await;
    let endpoints = usage["endpoints"].as_object().expect("endpoints");
    assert_eq!(endpoints.keys().collect::<Vec<_>>(), ["db"]);
    let db = &endpoints["db"];
    assert_eq!(db["queries"], 1 + 3 + 1 + 2);
    assert_eq!(db["sessions"], 0);
    let misses = gw
        .metric("gateway_pool_checkouts_total", "outcome=\"miss\"")
        .await;
    assert!(misses >= 2.0, "db and db-pooler are pooled apart: {misses}");
    assert_eq!(db["connections"].as_f64(), Some(misses));
    assert!(db["ingress_bytes"].as_u64() > Some(100));
    gw.stop().await;
}

#[tokio::test]
async fn batch_transaction_headers() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let client = reqwest::Client::new();
    let show = json!({"queries": [
        {"query": "SHOW transaction_isolation"},
        {"query": "SHOW transaction_read_only"},
        {"query": "SHOW transaction_deferrable"}
    ]});
    for (level, expected) in [
        ("ReadUncommitted", "read uncommitted"),
        ("ReadCommitted", "read committed"),
        ("RepeatableRead", "repeatable read"),
        ("Serializable", "serializable"),
    ] {
        let response = driver_request(&client, &gw, CONN)
            .header("Neon-Batch-Isolation-Level", level)
            .header("Neon-Batch-Read-Only", "true")
            .header("Neon-Batch-Deferrable", "true")
            .body(show.to_string())
            .send()
            .await
            .expect("send");
        assert_eq!(response.headers()["neon-batch-isolation-level"], level);
        assert_eq!(response.headers()["neon-batch-read-only"], "true");
        assert_eq!(response.headers()["neon-batch-deferrable"], "true");
        let body: Value = response.json().await.expect("json");
        let values: Vec<&Value> = (0..3).map(|i| &body["results"][i]["rows"][0][0]).collect();
        assert_eq!(
            values,
            [&json!(expected), &json!("on"), &json!("on")],
            "{level}"
        );
    }
    // Only the exact value `true` counts.
    let body: Value = driver_request(&client, &gw, CONN)
        .header("Neon-Batch-Read-Only", "TRUE")
        .body(show.to_string())
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["results"][1]["rows"][0][0], "off");
    // A read-only batch cannot write.
    let body: Value = driver_request(&client, &gw, CONN)
        .header("Neon-Batch-Read-Only", "true")
        .body(json!({"queries": [{"query": "CREATE TEMP TABLE nope (x int)"}]}).to_string())
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["code"], "25006");
    let response = driver_request(&client, &gw, CONN)
        .header("Neon-Batch-Isolation-Level", "serializable")
        .body(show.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["message"], "invalid isolation level");
    gw.stop().await;
}

#[tokio::test]
async fn postgres_errors_carry_every_field() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let (status, body) = sql(&gw, CONN, json!({"query": "SELECT nope FROM pg_class"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "column \"nope\" does not exist");
    assert_eq!(body["code"], "42703");
    assert_eq!(body["severity"], "ERROR");
    assert_eq!(body["position"], "8");
    assert!(body["file"].is_string() && body["line"].is_string() && body["routine"].is_string());
    assert_eq!(body.as_object().expect("object").len(), 17);

    // An error inside a function sets internalQuery/internalPosition and where.
    let (_, body) = sql(
        &gw,
        CONN,
        json!({"query": "DO $$ BEGIN PERFORM 1/0; END $$"}),
    )
    .await;
    assert_eq!(body["code"], "22012");
    assert!(
        body["where"]
            .as_str()
            .is_some_and(|w| w.contains("PL/pgSQL")),
        "{body}"
    );
    gw.stop().await;
}

/// A malformed request and how the gateway must refuse it.
struct BadInput {
    name: &'static str,
    /// The `Neon-Connection-String` header, if sent.
    conn: Option<&'static str>,
    body: Vec<u8>,
    expect: Refusal,
}

/// An error answer: HTTP status, SQLSTATE (`""` for none) and a part of the message.
struct Refusal {
    status: u16,
    code: &'static str,
    message_contains: &'static str,
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| {
            c.http.max_request_bytes = 64 * 1024;
            c.http.max_response_bytes = 64 * 1024;
        })
        .start()
        .await;
    let client = reqwest::Client::new();
    let send = |conn: Option<&str>, body: Vec<u8>| {
        let mut request = client.post(gw.sql_url()).body(body);
        if let Some(conn) = conn {
            request = request.header("Neon-Connection-String", conn);
        }
        async move {
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json error body");
            (status, body)
        }
    };
    let query = |q: &str| json!({"query": q}).to_string().into_bytes();
    let cases = [
        BadInput {
            name: "non-JSON body",
            conn: Some(CONN),
            body: b"SELECT 1".to_vec(),
            expect: Refusal {
                status: 400,
                code: "",
                message_contains: "invalid request body",
            },
        },
        BadInput {
            name: "wrong JSON shape",
            conn: Some(CONN),
            body: b"{\"sql\":\"SELECT 1\"}".to_vec(),
            expect: Refusal {
                status: 400,
                code: "",
                message_contains: "expected a \"query\"",
            },
        },
        BadInput {
            name: "query not a string",
            conn: Some(CONN),
            body: b"{\"query\":[1]}".to_vec(),
            expect: Refusal {
                status: 400,
                code: "",
                message_contains: "invalid request body",
            },
        },
        BadInput {
            name: "invalid UTF-8",
            conn: Some(CONN),
            body: b"{\"query\":\"SELECT '\xff'\"}".to_vec(),
            expect: Refusal {
                status: 400,
                code: "",
                message_contains: "invalid request body",
            },
        },
        BadInput {
            name: "missing connection string",
            conn: None,
            body: query("SELECT 1"),
            expect: Refusal {
                status: 400,
                code: "",
                message_contains: "missing connection string",
            },
        },
        BadInput {
            name: "malformed connection string",
            conn: Some("not a url"),
            body: query("SELECT 1"),
            expect: Refusal {
                status: 400,
                code: "",
                message_contains: "invalid connection string",
            },
        },
        BadInput {
            name: "wrong scheme",
            conn: Some("mysql://u:p@db.x/main"),
            body: query("SELECT 1"),
            expect: Refusal {
                status: 400,
                code: "",
                message_contains: "incorrect scheme",
            },
        },
        BadInput {
            name: "missing database",
            conn: Some("postgres://u:p@db.x"),
            body: query("SELECT 1"),
            expect: Refusal {
                status: 400,
                code: "",
                message_contains: "missing database",
            },
        },
        BadInput {
            name: "several statements",
            conn: Some(CONN),
            body: query("SELECT 1; SELECT 2"),
            expect: Refusal {
                status: 400,
                code: "42601",
                message_contains: "multiple commands",
            },
        },
        BadInput {
            name: "wrong parameter count",
            conn: Some(CONN),
            body: json!({"query": "SELECT $1, $2", "params": ["1"]})
                .to_string()
                .into_bytes(),
            expect: Refusal {
                status: 400,
                code: "08P01",
                message_contains: "2",
            },
        },
        BadInput {
            name: "NUL in query",
            conn: Some(CONN),
            body: query("SELECT '\u{0}'"),
            expect: Refusal {
                status: 400,
                code: "",
                message_contains: "NUL",
            },
        },
        BadInput {
            name: "oversized body",
            conn: Some(CONN),
            body: query(&"x".repeat(70 * 1024)),
            expect: Refusal {
                status: 413,
                code: "",
                message_contains: "request is too large (max is 65536 bytes)",
            },
        },
        BadInput {
            name: "oversized response",
            conn: Some(CONN),
            body: query("SELECT repeat('x', 1000) FROM generate_series(1, 100)"),
            expect: Refusal {
                status: 507,
                code: "",
                message_contains: "response is too large",
            },
        },
        BadInput {
            name: "oversized single row",
            conn: Some(CONN),
            body: query("SELECT repeat('x', 200000)"),
            expect: Refusal {
                status: 507,
                code: "",
                message_contains: "response is too large",
            },
        },
        BadInput {
            name: "unknown database",
            conn: Some("postgres://postgres:postgres@db.x/nosuchdb"),
            body: query("SELECT 1"),
            expect: Refusal {
                status: 400,
                code: "3D000",
                message_contains: "does not exist",
            },
        },
    ];
    for BadInput {
        name,
        conn,
        body,
        expect,
    } in cases
    {
        let (status, got) = send(conn, body).await;
        assert_eq!(status, expect.status, "{name}: {got}");
        assert_eq!(got["code"], expect.code, "{name}: {got}");
        assert!(
            got["message"]
                .as_str()
                .is_some_and(|m| m.contains(expect.message_contains)),
            "{name}: {got}"
        );
    }
    // Unknown endpoint and wrong password are indistinguishable.
    let (s1, unknown) = send(
        Some("postgres://postgres:postgres@nosuchendpoint.x/main"),
        query("SELECT 1"),
    )
    .await;
    let (s2, wrong) = send(
        Some("postgres://postgres:wrong@db.x/main"),
        query("SELECT 1"),
    )
    .await;
    let (s3, no_role) = send(
        Some("postgres://ghost:postgres@db.x/main"),
        query("SELECT 1"),
    )
    .await;
    assert_eq!((s1, s2, s3), (400, 400, 400));
    assert_eq!(unknown, wrong);
    assert_eq!(
        unknown["message"],
        "password authentication failed for user 'postgres'"
    );
    assert_eq!(
        no_role["message"],
        "password authentication failed for user 'ghost'"
    );
    // The gateway still works after all that.
    let (status, _) = sql(&gw, CONN, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn http_surface_cors_request_ids_and_http2() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let client = reqwest::Client::new();
    let preflight = client
        .request(reqwest::Method::OPTIONS, gw.sql_url())
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 200);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii");
    for h in [
        "Neon-Connection-String",
        "Neon-Batch-Deferrable",
        "Neon-Batch-Isolation-Level",
        "Authorization",
    ] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }
    assert!(preflight.headers().contains_key("neon-request-id"));

    for request in [
        client.get(format!("http://{}/", gw.addr)),
        client.get(gw.sql_url()),
        client.post(format!("http://{}/other", gw.addr)),
    ] {
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 400);
        assert!(response.headers().contains_key("neon-request-id"));
        assert_eq!(
            response.text().await.expect("text"),
            "\"query is not supported\""
        );
    }

    // A path prefix is ignored; only the `/sql` suffix matters.
    let response = client
        .post(format!("http://{}/any/prefix/sql", gw.addr))
        .header("Neon-Connection-String", CONN)
        .body(json!({"query": "SELECT 1 AS one"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let response = client
        .post(format!("http://{}/sqlx", gw.addr))
        .header("Neon-Connection-String", CONN)
        .body(json!({"query": "SELECT 1"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = driver_request(&h2, &gw, CONN)
        .body(json!({"query": "SELECT 42 AS answer"}).to_string())
        .send()
        .await
        .expect("h2 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let ids: Vec<_> = [&response]
        .iter()
        .map(|r| {
            r.headers()["neon-request-id"]
                .to_str()
                .expect("ascii")
                .len()
        })
        .collect();
    assert_eq!(ids, [36]);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["rows"], json!([["42"]]));
    gw.stop().await;
}

#[tokio::test]
async fn pooled_connections_need_a_verified_password() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let pg = postgres().client().await;
    let role = table("pool_role");
    pg.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'first'"))
        .await
        .expect("role");
    let conn = |pw: &str| format!("postgres://{role}:{pw}@db.x/main");

    let (status, _) = sql(&gw, &conn("first"), json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200);
    // Wait until the connection is back in the pool, then reuse it.
    wait_for(|| async { gw.metric("gateway_pool_idle_connections", "").await >= 1.0 }).await;
    let hits = gw
        .metric("gateway_pool_checkouts_total", "outcome=\"hit\"")
        .await;
    let (status, _) = sql(&gw, &conn("first"), json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        gw.metric("gateway_pool_checkouts_total", "outcome=\"hit\"")
            .await,
        hits + 1.0
    );

    // A wrong password never gets a result, although a pooled connection exists.
    wait_for(|| async { gw.metric("gateway_pool_idle_connections", "").await >= 1.0 }).await;
    let (status, body) = sql(&gw, &conn("wrong"), json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["message"],
        format!("password authentication failed for user '{role}'")
    );
    // Nor does it take anything from the role's owner: the idle connection and the proof of
    // the right password stay (whoever sends a wrong password need not be the owner), so the
    // owner's next request is a pool hit.
    assert!(gw.metric("gateway_pool_idle_connections", "").await >= 1.0);
    let hits = gw
        .metric("gateway_pool_checkouts_total", "outcome=\"hit\"")
        .await;
    let (status, _) = sql(&gw, &conn("first"), json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        gw.metric("gateway_pool_checkouts_total", "outcome=\"hit\"")
            .await,
        hits + 1.0
    );

    // After a password change the new password works (Postgres judges it)...
    pg.batch_execute(&format!("ALTER ROLE {role} PASSWORD 'second'"))
        .await
        .expect("alter");
    let (status, _) = sql(&gw, &conn("second"), json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200);
    // ...and the old one is no longer trusted from the cache.
    let (status, _) = sql(&gw, &conn("first"), json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 400);
    gw.stop().await;
    pg.batch_execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ))
    .await
    .expect("terminate");
    support::eventually("its backends are gone", Duration::from_secs(10), || async {
        let left: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        (left == 0).then_some(())
    })
    .await;
    pg.batch_execute(&format!("DROP ROLE {role}"))
        .await
        .expect("drop role");
}

#[tokio::test]
async fn sessions_are_reset_between_requests() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.pool.max_idle_per_endpoint = 1)
        .start()
        .await;
    let (_, body) = sql(&gw, CONN, json!({"query": "SHOW statement_timeout"})).await;
    let default = body["rows"][0][0].clone();
    // Every request below must reuse the one backend connection opened so far: otherwise the
    // check would run on a fresh session and prove nothing about the reset.
    let opened = gw
        .metric("gateway_pool_checkouts_total", "outcome=\"miss\"")
        .await;
    assert_eq!(opened, 1.0);
    for first in [
        json!({"queries": [{"query": "SET statement_timeout = 1234"}]}),
        json!({"query": "SET statement_timeout = 1234"}),
        json!({"query": "BEGIN"}),
    ] {
        wait_for(|| async { gw.metric("gateway_pool_idle_connections", "").await >= 1.0 }).await;
        let (status, _) = sql(&gw, CONN, first.clone()).await;
        assert_eq!(status, 200, "{first}");
        wait_for(|| async { gw.metric("gateway_pool_idle_connections", "").await >= 1.0 }).await;
        let (_, body) = sql(
            &gw,
            CONN,
            json!({"query": "SELECT current_setting('statement_timeout') AS t, txid_current_if_assigned() AS x"}),
        )
        .await;
        assert_eq!(body["rows"][0][0], default, "after {first}");
        assert_eq!(body["rows"][0][1], Value::Null, "after {first}");
    }
    // All six requests were pool hits on that same connection: each check ran on the session
    // the statement before it changed.
    assert_eq!(
        gw.metric("gateway_pool_checkouts_total", "outcome=\"miss\"")
            .await,
        opened
    );
    assert_eq!(
        gw.metric("gateway_pool_checkouts_total", "outcome=\"hit\"")
            .await,
        6.0
    );
    gw.stop().await;
}

/// More requests than connections finishing together: their returns are kept past the idle
/// cap, and the pool settles back to the cap about a second after the burst (not at the idle
/// timeout, holding Postgres connection slots meanwhile).
#[tokio::test]
async fn a_burst_past_the_idle_cap_settles_back_to_it() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| {
            c.pool.max_conns_per_endpoint = 8;
            c.pool.max_idle_per_endpoint = 1;
        })
        .start()
        .await;
    // Verified first, so the burst reuses connections instead of each logging in.
    let (status, _) = sql(&gw, CONN, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200);
    for _ in 0..5 {
        let burst = (0..12).map(|_| sql(&gw, CONN, json!({"query": "SELECT pg_sleep(0.05)"})));
        let statuses: Vec<u16> = futures_util::future::join_all(burst)
            .await
            .into_iter()
            .map(|(status, _)| status)
            .collect();
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
    wait_for(|| async { gw.metric("gateway_pool_idle_connections", "").await <= 1.0 }).await;
    gw.stop().await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_query() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let pg = postgres().client().await;
    let t = table("cancelled");
    pg.batch_execute(&format!("CREATE TABLE {t} (id int)"))
        .await
        .expect("create");
    let query = format!(
        "WITH ins AS (INSERT INTO {t} VALUES (1) RETURNING 1) SELECT pg_sleep(30) FROM ins"
    );
    let body = json!({"query": query}).to_string();
    let request = format!(
        "POST /sql HTTP/1.1\r\nHost: x\r\nNeon-Connection-String: {CONN}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    // Wait until the statement runs, then go away.
    wait_for(|| async { running(&pg, "pg_sleep(30)").await > 0 }).await;
    drop(stream);
    let started = Instant::now();
    wait_for(|| async { running(&pg, "pg_sleep(30)").await == 0 }).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the query was cancelled, not finished"
    );
    let count: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0, "the INSERT must not happen");
    assert!(
        gw.metric("gateway_errors_total", "kind=\"client_disconnect\"")
            .await
            >= 1.0
    );
    pg.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
    gw.stop().await;
}

#[tokio::test]
async fn connection_cap_per_endpoint() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| {
            c.pool.max_conns_per_endpoint = 1;
            c.pool.acquire_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    let slow = spawn_status(&gw, "SELECT pg_sleep(1.5)");
    wait_for(|| async { gw.metric("gateway_pool_active_connections", "").await >= 1.0 }).await;
    let (status, body) = sql(&gw, CONN, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["message"],
        "Too many connections to this endpoint. Please try again later."
    );
    assert_eq!(slow.await.expect("slow request"), 200);
    // The slot is free again.
    let (status, _) = sql(&gw, CONN, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn a_waiting_request_gets_the_connection_another_returns() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| {
            c.pool.max_conns_per_endpoint = 1;
            c.pool.acquire_timeout = Duration::from_secs(10);
        })
        .start()
        .await;
    // Prove the password once, so the waiter may reuse the connection.
    let (status, _) = sql(&gw, CONN, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200);
    let first = spawn_status(&gw, "SELECT pg_sleep(0.5)");
    wait_for(|| async { gw.metric("gateway_pool_active_connections", "").await >= 1.0 }).await;
    let started = Instant::now();
    let (status, body) = sql(&gw, CONN, json!({"query": "SELECT 2"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(first.await.expect("first request"), 200);
    // It was handed the returned connection, well before the acquire timeout.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        gw.metric("gateway_pool_checkouts_total", "outcome=\"miss\"")
            .await,
        1.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn idle_connections_expire() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.pool.idle_timeout = Duration::from_secs(1))
        .start()
        .await;
    let app = format!("expire_{}", std::process::id());
    let (status, _) = sql(
        &gw,
        CONN,
        json!({"query": format!("SET application_name = '{app}'")}),
    )
    .await;
    assert_eq!(status, 200);
    wait_for(|| async { gw.metric("gateway_pool_idle_connections", "").await >= 1.0 }).await;
    // The reaper closes it within the idle timeout plus one reaper period.
    wait_for(|| async { gw.metric("gateway_pool_idle_connections", "").await == 0.0 }).await;
    assert!(gw.metric("gateway_pool_discards_total", "").await >= 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_requests() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let before = gw
        .metric(
            "gateway_http_requests_total",
            "kind=\"single\",status=\"200\"",
        )
        .await;
    let (status, _) = sql(&gw, CONN, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200);
    let (status, _) = sql(&gw, CONN, json!({"query": "SELECT nope"})).await;
    assert_eq!(status, 400);
    assert_eq!(
        gw.metric(
            "gateway_http_requests_total",
            "kind=\"single\",status=\"200\""
        )
        .await,
        before + 1.0
    );
    assert!(gw.metric("gateway_errors_total", "kind=\"postgres\"").await >= 1.0);
    let text = gw.metrics().await;
    for name in [
        "gateway_http_request_duration_seconds_bucket",
        "gateway_backend_connect_duration_seconds_count",
        "gateway_pool_active_connections",
    ] {
        assert!(text.contains(name), "{name}");
    }
    let health = reqwest::get(format!("http://{}/healthz", gw.admin))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("http://{}/readyz", gw.admin))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    gw.stop().await;
}

/// Sends `query` in the background; the handle yields the HTTP status.
fn spawn_status(gw: &TestGateway, query: &str) -> tokio::task::JoinHandle<u16> {
    let request = reqwest::Client::new()
        .post(gw.sql_url())
        .header("Neon-Connection-String", CONN)
        .body(json!({ "query": query }).to_string());
    tokio::spawn(async move { request.send().await.expect("send").status().as_u16() })
}

/// Polls `check` every 50 ms for up to 15 s.
async fn wait_for<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "condition not reached within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn running(pg: &tokio_postgres::Client, fragment: &str) -> i64 {
    pg.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
        &[&fragment],
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}
