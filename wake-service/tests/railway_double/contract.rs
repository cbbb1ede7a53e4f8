//! Railway's published schema as a contract: every request the `railway` driver sends to the
//! test double is parsed and validated against it (fields, arguments and their types, input
//! object fields, enum values, variables and their values), so the driver cannot drift from
//! the real API while Railway itself is out of reach.
//!
//! The schema is published as introspection JSON (`tests/fixtures/railway/schema.json`);
//! `apollo-compiler` validates against SDL, so the JSON is written out as SDL first
//! ([`sdl_from_introspection`]).

use std::fmt::Write as _;

use apollo_compiler::executable::OperationType;
use apollo_compiler::request::coerce_variable_values;
use apollo_compiler::response::JsonMap;
use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Schema};
use serde_json::Value;

/// Directives every GraphQL schema has (`apollo-compiler` defines them itself).
const BUILT_IN_DIRECTIVES: [&str; 5] = ["deprecated", "include", "oneOf", "skip", "specifiedBy"];
/// Scalars every GraphQL schema has.
const BUILT_IN_SCALARS: [&str; 5] = ["Boolean", "Float", "ID", "Int", "String"];

/// The validated schema.
pub struct Contract {
    schema: Valid<Schema>,
}

/// What a valid request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    pub mutation: bool,
    /// The root fields it selects, in order (`serviceInstanceLimitsUpdate`, `deployments`, …).
    pub root_fields: Vec<String>,
}

impl Contract {
    /// The fixture's schema; panics (a test's setup failing) when it does not load.
    pub fn railway() -> Contract {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/railway/schema.json"
        );
        let text = std::fs::read_to_string(path).expect("the Railway schema fixture");
        let json: Value = serde_json::from_str(&text).expect("introspection JSON");
        Contract::from_introspection(&json).expect("Railway's schema is valid")
    }

    /// A contract from an introspection result (`{"data": {"__schema": …}}` or `{"__schema": …}`).
    pub fn from_introspection(json: &Value) -> Result<Contract, String> {
        let sdl = sdl_from_introspection(json)?;
        let schema = Schema::parse_and_validate(sdl, "schema.graphql")
            .map_err(|e| format!("the schema does not validate: {}", e.errors))?;
        Ok(Contract { schema })
    }

    /// Validates one request as a GraphQL server would before executing it: the document
    /// against the schema, then the variables against the operation's definitions. The error
    /// is the validator's own message.
    pub fn check(
        &self,
        query: &str,
        operation_name: Option<&str>,
        variables: &serde_json::Map<String, Value>,
    ) -> Result<Checked, String> {
        let document =
            ExecutableDocument::parse_and_validate(&self.schema, query, "request.graphql")
                .map_err(|e| e.errors.to_string())?;
        let operation = document
            .operations
            .get(operation_name)
            .map_err(|e| e.message().to_string())?;
        let values: JsonMap = variables
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.clone().into()))
            .collect();
        coerce_variable_values(&self.schema, operation, &values)
            .map_err(|e| e.message().to_string())?;
        Ok(Checked {
            mutation: operation.operation_type == OperationType::Mutation,
            root_fields: operation
                .selection_set
                .fields()
                .map(|f| f.name.to_string())
                .collect(),
        })
    }
}

/// The SDL of an introspection result: its scalars, objects, interfaces, unions, enums and input
/// objects with their fields, arguments and default values, its custom directives and its
/// root types. Descriptions and deprecations are left out (they do not change what validates).
pub fn sdl_from_introspection(json: &Value) -> Result<String, String> {
    let schema = json
        .pointer("/data/__schema")
        .or_else(|| json.get("__schema"))
        .ok_or("no __schema in the introspection result")?;
    let mut sdl = String::from("schema {\n");
    for (root, key) in [
        ("query", "queryType"),
        ("mutation", "mutationType"),
        ("subscription", "subscriptionType"),
    ] {
        if let Some(name) = schema
            .pointer(&format!("/{key}/name"))
            .and_then(Value::as_str)
        {
            let _ = writeln!(sdl, "  {root}: {name}");
        }
    }
    sdl.push_str("}\n");
    for directive in array(schema, "directives") {
        let name = text(directive, "name")?;
        if BUILT_IN_DIRECTIVES.contains(&name) {
            continue;
        }
        let locations: Vec<&str> = array(directive, "locations")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let repeatable = if directive["isRepeatable"] == Value::Bool(true) {
            " repeatable"
        } else {
            ""
        };
        let _ = writeln!(
            sdl,
            "directive @{name}{}{repeatable} on {}",
            arguments(directive)?,
            locations.join(" | ")
        );
    }
    for ty in array(schema, "types") {
        write_type(&mut sdl, ty)?;
    }
    Ok(sdl)
}

fn write_type(sdl: &mut String, ty: &Value) -> Result<(), String> {
    let name = text(ty, "name")?;
    if name.starts_with("__") || BUILT_IN_SCALARS.contains(&name) {
        return Ok(());
    }
    let names = |key: &str| -> Vec<&str> {
        array(ty, key)
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect()
    };
    match text(ty, "kind")? {
        "SCALAR" => {
            let _ = writeln!(sdl, "scalar {name}");
        }
        "ENUM" => {
            let _ = writeln!(sdl, "enum {name} {{ {} }}", names("enumValues").join(" "));
        }
        "UNION" => {
            let _ = writeln!(sdl, "union {name} = {}", names("possibleTypes").join(" | "));
        }
        kind @ ("OBJECT" | "INTERFACE") => {
            let keyword = if kind == "OBJECT" {
                "type"
            } else {
                "interface"
            };
            let interfaces = names("interfaces");
            let implements = if interfaces.is_empty() {
                String::new()
            } else {
                format!(" implements {}", interfaces.join(" & "))
            };
            let _ = writeln!(sdl, "{keyword} {name}{implements} {{");
            for field in array(ty, "fields") {
                let _ = writeln!(
                    sdl,
                    "  {}{}: {}",
                    text(field, "name")?,
                    arguments(field)?,
                    type_ref(&field["type"])?
                );
            }
            sdl.push_str("}\n");
        }
        "INPUT_OBJECT" => {
            let one_of = if ty["isOneOf"] == Value::Bool(true) {
                " @oneOf"
            } else {
                ""
            };
            let _ = writeln!(sdl, "input {name}{one_of} {{");
            for field in array(ty, "inputFields") {
                let _ = writeln!(sdl, "  {}", input_value(field)?);
            }
            sdl.push_str("}\n");
        }
        other => return Err(format!("type {name} has an unknown kind {other}")),
    }
    Ok(())
}

/// `(a: T, b: U = 1)`, or nothing without arguments.
fn arguments(field: &Value) -> Result<String, String> {
    let args = array(field, "args");
    if args.is_empty() {
        return Ok(String::new());
    }
    let args: Result<Vec<String>, String> = args.iter().map(input_value).collect();
    Ok(format!("({})", args?.join(", ")))
}

/// `name: Type` with its default value, if any (a GraphQL literal in introspection).
fn input_value(value: &Value) -> Result<String, String> {
    let mut out = format!("{}: {}", text(value, "name")?, type_ref(&value["type"])?);
    if let Some(default) = value["defaultValue"].as_str() {
        let _ = write!(out, " = {default}");
    }
    Ok(out)
}

/// `T`, `T!`, `[T!]!`, … from an introspection type reference.
fn type_ref(ty: &Value) -> Result<String, String> {
    match text(ty, "kind")? {
        "NON_NULL" => Ok(format!("{}!", type_ref(&ty["ofType"])?)),
        "LIST" => Ok(format!("[{}]", type_ref(&ty["ofType"])?)),
        _ => text(ty, "name").map(str::to_owned),
    }
}

fn text<'a>(value: &'a Value, key: &str) -> Result<&'a str, String> {
    value[key]
        .as_str()
        .ok_or_else(|| format!("no {key} in {}", truncate(value)))
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value[key].as_array().map_or(&[], Vec::as_slice)
}

fn truncate(value: &Value) -> String {
    value.to_string().chars().take(120).collect()
}
