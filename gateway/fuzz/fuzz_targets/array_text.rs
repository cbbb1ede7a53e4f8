//! A column value in typed JSON output (`query::json::write_typed`): the Postgres array-text
//! parser (`{1,2}`, `{{"a",NULL}}`, `[0:1]={1,2}`, any delimiter a custom type declares) and
//! the scalars, with text from a backend the tenant controls.
//!
//! Input: one byte picking the element kind, one the delimiter, then the value's text (as the
//! gateway reads it from a DataRow: lossy UTF-8).
//!
//! Checks: the output is one valid JSON value (except json/jsonb, which is embedded as Postgres
//! printed it), whatever the nesting.
#![no_main]

use gateway::fuzzing::query::json::write_typed;
use gateway::fuzzing::query::types::{ColumnType, JsonKind};
use gateway_fuzz::is_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [kind, delimiter, text @ ..] = data else {
        return;
    };
    let kind = [
        JsonKind::Text,
        JsonKind::Integer,
        JsonKind::Float,
        JsonKind::Bool,
        JsonKind::Json,
    ][usize::from(kind % 5)];
    // `,` for every built-in array but box's `;`; a custom type may declare any ASCII byte.
    let delimiter = match delimiter {
        0..=127 => *delimiter,
        128..=191 => b',',
        _ => b';',
    };
    let text = String::from_utf8_lossy(text);
    for array_delimiter in [Some(delimiter), None] {
        let mut out = Vec::new();
        write_typed(
            &mut out,
            &text,
            ColumnType {
                kind,
                array_delimiter,
            },
        );
        assert!(
            kind == JsonKind::Json || is_json(&out),
            "not JSON: {}",
            String::from_utf8_lossy(&out)
        );
    }
});
