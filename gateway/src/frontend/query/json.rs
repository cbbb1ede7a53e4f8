//! Statement results as the driver's JSON: `{fields, rows, command, rowCount, rowAsArray}`.
//!
//! Raw mode (`Neon-Raw-Text-Output: true`, what the driver sends) writes every value as its
//! Postgres text output. Typed mode turns booleans, int2/int4, floats, json and arrays into JSON
//! values. Rows are arrays in array mode, else objects keyed by column name (duplicate names
//! give duplicate keys, as in the proxy).

use std::io::Write;

use postgres_protocol::message::backend::DataRowBody;

use super::types::{ColumnType, JsonKind, TypeMap};
use super::{Field, StatementResult};

/// How values and rows are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputMode {
    pub raw_text: bool,
    pub array_mode: bool,
}

/// The output passed `max` bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge;

/// Appends one result object to `out`, failing once `out` grows beyond `max` bytes.
pub fn write_result(
    out: &mut Vec<u8>,
    result: &StatementResult,
    mode: OutputMode,
    types: &TypeMap,
    max: usize,
) -> Result<(), TooLarge> {
    out.push(b'{');
    write_fields(out, &result.fields);
    out.extend_from_slice(b",\"rows\":[");
    let column_types: Vec<ColumnType> = result
        .fields
        .iter()
        .map(|f| {
            types.get(&f.type_oid).copied().unwrap_or(ColumnType {
                kind: JsonKind::Text,
                array_delimiter: None,
            })
        })
        .collect();
    for (i, row) in result.rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_row(out, row, &result.fields, &column_types, mode);
        if out.len() > max {
            return Err(TooLarge);
        }
    }
    let (command, row_count) = split_tag(result.tag.as_deref());
    out.extend_from_slice(b"],\"command\":");
    write_str(out, command);
    out.extend_from_slice(b",\"rowCount\":");
    match row_count {
        Some(n) => write!(out, "{n}").expect("writing into a Vec cannot fail"),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"rowAsArray\":");
    out.extend_from_slice(if mode.array_mode { b"true" } else { b"false" });
    out.push(b'}');
    if out.len() > max {
        return Err(TooLarge);
    }
    Ok(())
}

/// `"fields":[…]`: each column's name and type, as node-postgres describes fields.
fn write_fields(out: &mut Vec<u8>, fields: &[Field]) {
    out.extend_from_slice(b"\"fields\":[");
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        write_str(out, &field.name);
        // Into the buffer directly: no String per field.
        write!(
            out,
            ",\"dataTypeID\":{},\"tableID\":{},\"columnID\":{},\"dataTypeSize\":{},\"dataTypeModifier\":{},\"format\":\"text\"}}",
            field.type_oid, field.table_oid, field.column_id, field.type_size, field.type_modifier
        )
        .expect("writing into a Vec cannot fail");
    }
    out.push(b']');
}

/// One row: an array of values, or an object keyed by column name.
fn write_row(
    out: &mut Vec<u8>,
    row: &DataRowBody,
    fields: &[Field],
    column_types: &[ColumnType],
    mode: OutputMode,
) {
    out.push(if mode.array_mode { b'[' } else { b'{' });
    let buf = row.buffer();
    let mut ranges = row.ranges();
    let mut column = 0;
    while let Ok(Some(range)) = fallible_iterator::FallibleIterator::next(&mut ranges) {
        if column > 0 {
            out.push(b',');
        }
        if !mode.array_mode {
            let name = fields.get(column).map_or("?column?", |f| &f.name);
            write_str(out, name);
            out.push(b':');
        }
        match range {
            None => out.extend_from_slice(b"null"),
            Some(range) => {
                let text = String::from_utf8_lossy(&buf[range]);
                match column_types.get(column) {
                    Some(ty) if !mode.raw_text => write_typed(out, &text, *ty),
                    _ => write_str(out, &text),
                }
            }
        }
        column += 1;
    }
    out.push(if mode.array_mode { b']' } else { b'}' });
}

/// `command` is the tag's first word; `rowCount` its last number (`INSERT 0 5` → 5), or null
/// when the tag carries none (`CREATE TABLE`).
pub fn split_tag(tag: Option<&str>) -> (&str, Option<u64>) {
    let Some(tag) = tag else {
        return ("", None);
    };
    let mut words = tag.split_ascii_whitespace();
    let command = words.next().unwrap_or_default();
    let count = words.next_back().and_then(|w| w.parse().ok());
    (command, count)
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a str into a Vec cannot fail");
}

/// Writes one (non-NULL) value of a column of type `ty` in typed mode. Text that is not what
/// the type promises stays a JSON string; json and jsonb (elements) are embedded as they are.
pub fn write_typed(out: &mut Vec<u8>, text: &str, ty: ColumnType) {
    match ty.array_delimiter {
        Some(delimiter) => {
            let start = out.len();
            if write_array(out, text, delimiter, ty.kind).is_none() {
                // Not an array literal we understand: keep the text rather than fail.
                out.truncate(start);
                write_str(out, text);
            }
        }
        None => write_scalar(out, text, ty.kind),
    }
}

fn write_scalar(out: &mut Vec<u8>, text: &str, kind: JsonKind) {
    match kind {
        JsonKind::Bool => out.extend_from_slice(if text == "t" { b"true" } else { b"false" }),
        JsonKind::Integer if is_json_number(text) => out.extend_from_slice(text.as_bytes()),
        JsonKind::Float if is_json_number(text) => out.extend_from_slice(text.as_bytes()),
        JsonKind::Json => out.extend_from_slice(text.as_bytes()),
        _ => write_str(out, text),
    }
}

/// Postgres prints numbers that are valid JSON, except NaN and ±Infinity: those stay strings.
fn is_json_number(text: &str) -> bool {
    serde_json::from_str::<serde_json::Number>(text).is_ok()
}

/// As Postgres (`MAXDIM`): no array has more dimensions, so `array_out` never nests deeper.
/// The text comes from a backend the tenant controls: deeper nesting is not followed (the
/// parser recurses once per level) and the value stays text.
const MAX_ARRAY_DIMENSIONS: usize = 6;

/// Writes a Postgres array literal (`{1,2}`, `{{"a",NULL}}`, `[0:1]={1,2}`) as nested JSON
/// arrays. Returns `None` if the text is not a well-formed literal of at most
/// [`MAX_ARRAY_DIMENSIONS`] dimensions.
fn write_array(out: &mut Vec<u8>, text: &str, delimiter: u8, kind: JsonKind) -> Option<()> {
    let bytes = text.as_bytes();
    // Explicit bounds decoration: `[1:2][1:3]={…}`.
    let mut pos = if bytes.first() == Some(&b'[') {
        text.find('=')? + 1
    } else {
        0
    };
    write_array_level(out, bytes, &mut pos, delimiter, kind, 1)?;
    (pos == bytes.len()).then_some(())
}

/// A double-quoted array element starting at `pos`, unescaped; `pos` ends after the quote.
fn quoted_element(bytes: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
    *pos += 1;
    let mut element = Vec::new();
    loop {
        match *bytes.get(*pos)? {
            b'"' => break,
            b'\\' => {
                element.push(*bytes.get(*pos + 1)?);
                *pos += 2;
            }
            b => {
                element.push(b);
                *pos += 1;
            }
        }
    }
    *pos += 1;
    Some(element)
}

/// An unquoted array element starting at `pos`, unescaped, up to the delimiter or `}`.
fn bare_element(bytes: &[u8], pos: &mut usize, delimiter: u8) -> Option<Vec<u8>> {
    let mut element = Vec::new();
    while let Some(&b) = bytes.get(*pos) {
        if b == delimiter || b == b'}' {
            break;
        }
        if b == b'\\' {
            element.push(*bytes.get(*pos + 1)?);
            *pos += 2;
        } else {
            element.push(b);
            *pos += 1;
        }
    }
    Some(element)
}

/// One `{…}` level of an array literal at `pos` (nested levels recurse, at most
/// [`MAX_ARRAY_DIMENSIONS`] deep), written as a JSON array; `None` if it is malformed.
fn write_array_level(
    out: &mut Vec<u8>,
    bytes: &[u8],
    pos: &mut usize,
    delimiter: u8,
    kind: JsonKind,
    depth: usize,
) -> Option<()> {
    if depth > MAX_ARRAY_DIMENSIONS || bytes.get(*pos) != Some(&b'{') {
        return None;
    }
    *pos += 1;
    out.push(b'[');
    let mut first = true;
    loop {
        skip_space(bytes, pos);
        match bytes.get(*pos)? {
            b'}' if first => {
                *pos += 1;
                break;
            }
            _ => {}
        }
        if !first {
            out.push(b',');
        }
        first = false;
        match bytes.get(*pos)? {
            b'{' => write_array_level(out, bytes, pos, delimiter, kind, depth + 1)?,
            b'"' => {
                let element = quoted_element(bytes, pos)?;
                write_scalar(out, std::str::from_utf8(&element).ok()?, kind);
            }
            _ => {
                let element = bare_element(bytes, pos, delimiter)?;
                let element = std::str::from_utf8(&element).ok()?.trim();
                if element.eq_ignore_ascii_case("NULL") {
                    out.extend_from_slice(b"null");
                } else {
                    write_scalar(out, element, kind);
                }
            }
        }
        skip_space(bytes, pos);
        match *bytes.get(*pos)? {
            b'}' => {
                *pos += 1;
                break;
            }
            b if b == delimiter => *pos += 1,
            _ => return None,
        }
    }
    out.push(b']');
    Some(())
}

fn skip_space(bytes: &[u8], pos: &mut usize) {
    while bytes.get(*pos).is_some_and(u8::is_ascii_whitespace) {
        *pos += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(text: &str, kind: JsonKind, array: bool) -> String {
        let mut out = Vec::new();
        write_typed(
            &mut out,
            text,
            ColumnType {
                kind,
                array_delimiter: array.then_some(b','),
            },
        );
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn scalars() {
        let check = |text, kind, expected: &str| assert_eq!(typed(text, kind, false), expected);
        check("t", JsonKind::Bool, "true");
        check("f", JsonKind::Bool, "false");
        check("-32768", JsonKind::Integer, "-32768");
        check("1.5e+300", JsonKind::Float, "1.5e+300");
        check("NaN", JsonKind::Float, "\"NaN\"");
        check("-Infinity", JsonKind::Float, "\"-Infinity\"");
        check("{\"a\": [1, null]}", JsonKind::Json, "{\"a\": [1, null]}");
        check("a \"q\" \\ \n", JsonKind::Text, "\"a \\\"q\\\" \\\\ \\n\"");
    }

    #[test]
    fn arrays() {
        let check = |text, kind, expected: &str| assert_eq!(typed(text, kind, true), expected);
        check("{1,2,3}", JsonKind::Integer, "[1,2,3]");
        check("{}", JsonKind::Integer, "[]");
        check("{{1,2},{3,NULL}}", JsonKind::Integer, "[[1,2],[3,null]]");
        check("[0:1]={7,8}", JsonKind::Integer, "[7,8]");
        check(
            r#"{"a b","c\"d",NULL,"NULL",e\,f}"#,
            JsonKind::Text,
            r#"["a b","c\"d",null,"NULL","e,f"]"#,
        );
        check("{t,f}", JsonKind::Bool, "[true,false]");
        check("{NaN,1.5}", JsonKind::Float, "[\"NaN\",1.5]");
        check(r#"{"{\"x\":1}",null}"#, JsonKind::Json, r#"[{"x":1},null]"#);
        // Not a literal: falls back to the text.
        check("{1,2", JsonKind::Integer, "\"{1,2\"");
    }

    #[test]
    fn array_nesting_is_bounded() {
        let nested = |depth: usize| format!("{}1{}", "{".repeat(depth), "}".repeat(depth));
        let json = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let quoted = |text: &str| serde_json::to_string(text).expect("a str is JSON");
        // Postgres's MAXDIM: six dimensions are an array, seven only text.
        assert_eq!(typed(&nested(6), JsonKind::Integer, true), json(6));
        let seven = nested(7);
        assert_eq!(typed(&seven, JsonKind::Integer, true), quoted(&seven));
        // A backend's say-so must not recurse this deep (it overflowed the stack).
        let deep = "{".repeat(100_000);
        assert_eq!(typed(&deep, JsonKind::Text, true), quoted(&deep));
        let deep = nested(100_000);
        assert_eq!(typed(&deep, JsonKind::Integer, true), quoted(&deep));
    }

    #[test]
    fn tags() {
        assert_eq!(split_tag(Some("SELECT 3")), ("SELECT", Some(3)));
        assert_eq!(split_tag(Some("INSERT 0 5")), ("INSERT", Some(5)));
        assert_eq!(split_tag(Some("CREATE TABLE")), ("CREATE", None));
        assert_eq!(split_tag(Some("BEGIN")), ("BEGIN", None));
        assert_eq!(split_tag(None), ("", None));
    }
}
