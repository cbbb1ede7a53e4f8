//! The `POST /sql` body as `http::sql::Payload::parse` reads it (a single query or a batch),
//! and the batch isolation header.
//!
//! Checks: an accepted body is JSON; a single query's text, `arrayMode` and string or
//! null parameters are the body's own (a string parameter is sent as that text, null as SQL
//! NULL); a batch has one statement per element of `queries`, each checked the same way.
#![no_main]

use gateway::fuzzing::query::{IsolationLevel, Statement};
use gateway::fuzzing::Payload;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

/// The reference reading of a body: the fields the gateway reads, as JSON values. Unknown
/// fields are skipped unchecked, as serde skips them for the gateway (their strings are not
/// checked for UTF-8, nor their numbers for range).
#[derive(Deserialize)]
struct Body {
    query: Option<Value>,
    params: Option<Value>,
    #[serde(rename = "arrayMode")]
    array_mode: Option<Value>,
    queries: Option<Vec<Query>>,
}

#[derive(Deserialize)]
struct Query {
    query: Value,
    params: Option<Value>,
    #[serde(rename = "arrayMode")]
    array_mode: Option<Value>,
}

fuzz_target!(|data: &[u8]| {
    let _ = IsolationLevel::from_header(data);
    let Ok(payload) = Payload::parse(data) else {
        return;
    };
    let body: Body = serde_json::from_slice(data).expect("an accepted body is JSON");
    match payload {
        Payload::Single(statement) => check(
            &statement,
            body.query.as_ref(),
            body.params.as_ref(),
            body.array_mode.as_ref(),
        ),
        Payload::Batch(statements) => {
            assert!(body.query.is_none());
            let queries = body.queries.expect("a batch has queries");
            assert_eq!(statements.len(), queries.len());
            for (statement, query) in statements.iter().zip(&queries) {
                check(
                    statement,
                    Some(&query.query),
                    query.params.as_ref(),
                    query.array_mode.as_ref(),
                );
            }
        }
    }
});

fn check(
    statement: &Statement,
    query: Option<&Value>,
    params: Option<&Value>,
    array_mode: Option<&Value>,
) {
    assert_eq!(
        Some(statement.query.as_str()),
        query.and_then(Value::as_str)
    );
    assert_eq!(statement.array_mode, array_mode.and_then(Value::as_bool));
    let params = params
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    assert_eq!(statement.params.len(), params.len());
    for (param, value) in statement.params.iter().zip(params) {
        match value {
            Value::Null => assert_eq!(*param, None),
            Value::String(text) => assert_eq!(param.as_deref(), Some(text.as_str())),
            _ => assert!(param.is_some()),
        }
    }
}
