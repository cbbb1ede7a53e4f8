//! Column descriptions, and what each column type becomes in typed (non-raw) JSON output.
//!
//! Built-in types are known statically. Other types (enums, domains, arrays of them) are looked
//! up in `pg_type` once per endpoint and database and cached, so a custom array still becomes a
//! JSON array.

use std::collections::HashMap;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::RowDescriptionBody;
use postgres_types::{Kind, Type};

use super::{Field, StatementResult};
use crate::base::endpoint::EndpointId;
use crate::compute::{Backend, BackendError};

/// What a text value of a column turns into in typed JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonKind {
    Bool,
    /// int2, int4: a JSON number. (int8 and numeric stay strings, as in the proxy.)
    Integer,
    /// float4, float8: a number, except NaN and ±Infinity which stay strings.
    Float,
    /// json, jsonb: embedded as is.
    Json,
    Text,
}

/// A column's JSON treatment: scalar, or an array (any dimension) of that scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnType {
    pub kind: JsonKind,
    /// For array types: the element delimiter (`,` for all but `box`).
    pub array_delimiter: Option<u8>,
}

impl ColumnType {
    const TEXT: ColumnType = ColumnType {
        kind: JsonKind::Text,
        array_delimiter: None,
    };
}

/// Known OIDs → column types, for one request.
pub type TypeMap = HashMap<u32, ColumnType>;

/// Reads the columns of a RowDescription.
pub fn fields(body: &RowDescriptionBody) -> Result<Vec<Field>, BackendError> {
    let mut fields = Vec::new();
    let mut iter = body.fields();
    while let Some(field) = iter.next()? {
        fields.push(Field {
            name: field.name().to_owned(),
            table_oid: field.table_oid(),
            column_id: field.column_id(),
            type_oid: field.type_oid(),
            type_size: field.type_size(),
            type_modifier: field.type_modifier(),
        });
    }
    Ok(fields)
}

fn scalar_kind(ty: &Type) -> JsonKind {
    match *ty {
        Type::BOOL => JsonKind::Bool,
        Type::INT2 | Type::INT4 => JsonKind::Integer,
        Type::FLOAT4 | Type::FLOAT8 => JsonKind::Float,
        Type::JSON | Type::JSONB => JsonKind::Json,
        _ => JsonKind::Text,
    }
}

/// The column type of a built-in OID, or `None` when the OID is not built in.
pub fn builtin(oid: u32) -> Option<ColumnType> {
    let ty = Type::from_oid(oid)?;
    Some(match ty.kind() {
        Kind::Array(element) => ColumnType {
            kind: scalar_kind(element),
            array_delimiter: Some(if *element == Type::BOX { b';' } else { b',' }),
        },
        _ => ColumnType {
            kind: scalar_kind(&ty),
            array_delimiter: None,
        },
    })
}

/// Cache of non-built-in types, per (endpoint, database, oid).
pub struct TypeCache {
    cache: moka::sync::Cache<(EndpointId, String, u32), ColumnType>,
}

impl Default for TypeCache {
    fn default() -> Self {
        TypeCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }
}

impl TypeCache {
    /// Resolves every column type of `results`, looking unknown OIDs up on `backend` (which
    /// must be idle at a ReadyForQuery boundary).
    pub async fn resolve(
        &self,
        endpoint: &EndpointId,
        database: &str,
        backend: &mut Backend,
        results: &[StatementResult],
    ) -> Result<TypeMap, BackendError> {
        let mut map = TypeMap::new();
        let mut unknown = Vec::new();
        for oid in results
            .iter()
            .flat_map(|r| r.fields.iter().map(|f| f.type_oid))
        {
            if map.contains_key(&oid) || unknown.contains(&oid) {
                continue;
            }
            let key = (endpoint.clone(), database.to_owned(), oid);
            match builtin(oid).or_else(|| self.cache.get(&key)) {
                Some(ty) => {
                    map.insert(oid, ty);
                }
                None => unknown.push(oid),
            }
        }
        if unknown.is_empty() {
            return Ok(map);
        }
        let list = unknown
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // OIDs are integers we format ourselves: no user text reaches this statement.
        let sql = format!(
            "SELECT oid::text, typelem::text, typdelim::text, typcategory::text \
             FROM pg_catalog.pg_type WHERE oid IN ({list})"
        );
        for row in backend.simple_query_rows(&sql).await? {
            let parse = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let Ok(oid) = parse(0).parse::<u32>() else {
                continue;
            };
            let element: u32 = parse(1).parse().unwrap_or(0);
            let ty = if parse(3) == "A" && element != 0 {
                ColumnType {
                    kind: builtin(element).map_or(JsonKind::Text, |t| t.kind),
                    array_delimiter: Some(parse(2).bytes().next().unwrap_or(b',')),
                }
            } else {
                ColumnType::TEXT
            };
            self.cache
                .insert((endpoint.clone(), database.to_owned(), oid), ty);
            map.insert(oid, ty);
        }
        for oid in unknown {
            map.entry(oid).or_insert(ColumnType::TEXT);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_types() {
        let check = |oid: u32, kind: JsonKind, delim: Option<u8>| {
            assert_eq!(
                builtin(oid),
                Some(ColumnType {
                    kind,
                    array_delimiter: delim
                }),
                "oid {oid}"
            )
        };
        check(16, JsonKind::Bool, None);
        check(21, JsonKind::Integer, None);
        check(23, JsonKind::Integer, None);
        check(20, JsonKind::Text, None); // int8 stays a string
        check(1700, JsonKind::Text, None); // numeric stays a string
        check(701, JsonKind::Float, None);
        check(3802, JsonKind::Json, None);
        check(1007, JsonKind::Integer, Some(b',')); // int4[]
        check(1009, JsonKind::Text, Some(b',')); // text[]
        check(1020, JsonKind::Text, Some(b';')); // box[]
        check(199, JsonKind::Json, Some(b',')); // json[]
        assert_eq!(builtin(987_654), None);
    }
}
