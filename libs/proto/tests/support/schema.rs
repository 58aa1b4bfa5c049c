//! The schema checker of the two AsyncAPI tests (libs/proto/tests/asyncapi_ws.rs, WebSocket;
//! libs/bus/tests/asyncapi.rs, NATS): a serialized Rust value against a message schema of the
//! document, recursively, following local `$ref`s. Shared as a source file (`#[path]`), since the
//! two documents' types live in two crates.

use std::collections::BTreeSet;

use serde_json::Value;

/// docs/`name`, parsed.
pub fn load(name: &str) -> Value {
    let path = format!("{}/../../docs/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Follows a local `$ref` (`#/a/b/c`).
pub fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(doc, target)
        }
        None => v,
    }
}

/// Full: every Option is Some, so keys == properties. Minimal: every Option is None, so keys ==
/// required. Fits (examples): required ⊆ keys ⊆ properties.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Sample {
    Full,
    Minimal,
    Fits,
}

/// Checks `value` against `schema`; `Err` says where they differ.
pub fn check(
    doc: &Value,
    schema: &Value,
    value: &Value,
    mode: Sample,
    at: &str,
) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(alternatives) = schema.get("oneOf").and_then(Value::as_array) {
        let fits = alternatives
            .iter()
            .filter(|alt| check(doc, alt, value, mode, at).is_ok())
            .count();
        return if fits == 1 {
            Ok(())
        } else {
            Err(format!(
                "{at}: {value} fits {fits} of the oneOf alternatives"
            ))
        };
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not in the enum {allowed:?}"));
    }
    if let Some(c) = schema.get("const")
        && c != value
    {
        return Err(format!("{at}: {value} is not the const {c}"));
    }
    let ty = schema.get("type").and_then(Value::as_str);
    match (ty, value) {
        (Some("object"), Value::Object(fields)) if schema.get("properties").is_none() => {
            let values = &schema["additionalProperties"];
            assert!(
                values.is_object(),
                "{at}: an object schema without properties"
            );
            if fields.is_empty() && mode != Sample::Fits {
                return Err(format!("{at}: give the sample map at least one entry"));
            }
            fields
                .iter()
                .try_for_each(|(k, v)| check(doc, values, v, mode, &format!("{at}.{k}")))
        }
        (Some("object"), Value::Object(fields)) => {
            let props = schema["properties"].as_object().expect("properties");
            let declared: BTreeSet<&str> = props.keys().map(String::as_str).collect();
            let required: BTreeSet<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let present: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
            if !required.is_subset(&declared) {
                return Err(format!("{at}: required {required:?} not all declared"));
            }
            let fits = match mode {
                Sample::Full => present == declared,
                Sample::Minimal => present == required,
                Sample::Fits => required.is_subset(&present) && present.is_subset(&declared),
            };
            if !fits {
                return Err(format!(
                    "{at}: fields {present:?}, schema ({mode:?}) declares {declared:?}, requires {required:?}"
                ));
            }
            for (k, v) in fields {
                check(doc, &props[k], v, mode, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Some("array"), Value::Array(items)) => {
            if items.is_empty() && mode != Sample::Fits {
                return Err(format!("{at}: give the sample at least one item"));
            }
            items
                .iter()
                .try_for_each(|i| check(doc, &schema["items"], i, mode, &format!("{at}[]")))
        }
        (Some("string"), Value::String(_)) | (Some("boolean"), Value::Bool(_)) | (None, _) => {
            Ok(())
        }
        (Some("integer"), Value::Number(n)) if n.is_u64() => Ok(()),
        (Some("integer"), Value::Number(n)) if n.is_i64() => match schema.get("minimum") {
            Some(min) if min.as_i64().is_some_and(|m| n.as_i64() < Some(m)) => {
                Err(format!("{at}: {n} is below the minimum {min}"))
            }
            _ => Ok(()),
        },
        (ty, v) => Err(format!("{at}: {v} is not of type {ty:?}")),
    }
}
