//! JSON Schemas for the constrained-decoding tests (`tests/constraint.rs`): one per feature
//! (nested objects, required and optional fields, arrays with item bounds, enums and const,
//! numeric ranges, booleans and null, string formats, patterns and lengths, anyOf, `$ref`),
//! each bounded so that a random walk over the allowed tokens ends within a few hundred
//! tokens (every string has a length bound, a pattern or a format; every array a maxItems).
//! Documents are checked by an independent validator, the `jsonschema` crate, formats on.

use serde_json::{json, Value};

/// `(name, schema)` pairs.
pub fn schemas() -> Vec<(&'static str, Value)> {
    let short = |n: u32| json!({"type": "string", "maxLength": n});
    vec![
        (
            "required_and_optional",
            json!({
                "type": "object",
                "properties": {
                    "name": short(12),
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "nickname": short(8)
                },
                "required": ["name", "age"],
                "additionalProperties": false
            }),
        ),
        (
            "nested_objects",
            json!({
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": 999},
                    "address": {
                        "type": "object",
                        "properties": {
                            "street": short(16),
                            "city": short(12),
                            "geo": {
                                "type": "object",
                                "properties": {
                                    "lat": {"type": "number", "minimum": -90, "maximum": 90},
                                    "lon": {"type": "number", "minimum": -180, "maximum": 180}
                                },
                                "required": ["lat", "lon"],
                                "additionalProperties": false
                            }
                        },
                        "required": ["street", "city", "geo"],
                        "additionalProperties": false
                    }
                },
                "required": ["id", "address"],
                "additionalProperties": false
            }),
        ),
        (
            "arrays_min_max_items",
            json!({
                "type": "object",
                "properties": {
                    "tags": {"type": "array", "items": short(6), "minItems": 2, "maxItems": 4},
                    "scores": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0, "maximum": 10},
                        "minItems": 1,
                        "maxItems": 3
                    }
                },
                "required": ["tags", "scores"],
                "additionalProperties": false
            }),
        ),
        (
            "enums_and_const",
            json!({
                "type": "object",
                "properties": {
                    "color": {"enum": ["red", "green", "blue"]},
                    "size": {"enum": ["S", "M", 3, null, true]},
                    "kind": {"const": "widget"}
                },
                "required": ["color", "size", "kind"],
                "additionalProperties": false
            }),
        ),
        (
            "number_ranges",
            json!({
                "type": "object",
                "properties": {
                    "celsius": {"type": "number", "minimum": -40.5, "maximum": 60},
                    "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 100},
                    "ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                    "step": {"type": "integer", "minimum": -30, "maximum": 30, "multipleOf": 5}
                },
                "required": ["celsius", "count", "ratio", "step"],
                "additionalProperties": false
            }),
        ),
        (
            "booleans_and_null",
            json!({
                "type": "object",
                "properties": {
                    "active": {"type": "boolean"},
                    "deleted": {"type": "null"},
                    "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
                    "maybe": {"type": ["boolean", "null"]}
                },
                "required": ["active", "deleted", "flags", "maybe"],
                "additionalProperties": false
            }),
        ),
        (
            "string_formats",
            json!({
                "type": "object",
                "properties": {
                    "created": {"type": "string", "format": "date-time"},
                    "day": {"type": "string", "format": "date"},
                    "id": {"type": "string", "format": "uuid"},
                    "contact": {"type": "string", "format": "email", "maxLength": 24},
                    "host": {"type": "string", "format": "ipv4"}
                },
                "required": ["created", "day", "id", "contact", "host"],
                "additionalProperties": false
            }),
        ),
        (
            "patterns_and_lengths",
            json!({
                "type": "object",
                "properties": {
                    "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
                    "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
                    "word": {"type": "string", "minLength": 2, "maxLength": 5}
                },
                "required": ["code", "hex", "word"],
                "additionalProperties": false
            }),
        ),
        (
            "any_of",
            json!({
                "type": "object",
                "properties": {
                    "value": {"anyOf": [
                        {"type": "integer", "minimum": 0, "maximum": 9},
                        {"type": "string", "maxLength": 4},
                        {"type": "null"}
                    ]},
                    "shape": {"anyOf": [
                        {
                            "type": "object",
                            "properties": {"radius": {"type": "integer", "minimum": 1, "maximum": 9}},
                            "required": ["radius"],
                            "additionalProperties": false
                        },
                        {
                            "type": "object",
                            "properties": {"side": {"type": "integer", "minimum": 1, "maximum": 9}},
                            "required": ["side"],
                            "additionalProperties": false
                        }
                    ]}
                },
                "required": ["value", "shape"],
                "additionalProperties": false
            }),
        ),
        (
            "array_of_objects",
            json!({
                "type": "object",
                "properties": {
                    "lines": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 3,
                        "items": {
                            "type": "object",
                            "properties": {
                                "sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                                "qty": {"type": "integer", "minimum": 1, "maximum": 50}
                            },
                            "required": ["sku", "qty"],
                            "additionalProperties": false
                        }
                    }
                },
                "required": ["lines"],
                "additionalProperties": false
            }),
        ),
        (
            "defs_and_refs",
            json!({
                "$defs": {
                    "point": {
                        "type": "object",
                        "properties": {
                            "x": {"type": "integer", "minimum": -99, "maximum": 99},
                            "y": {"type": "integer", "minimum": -99, "maximum": 99}
                        },
                        "required": ["x", "y"],
                        "additionalProperties": false
                    }
                },
                "type": "object",
                "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}},
                "required": ["from", "to"],
                "additionalProperties": false
            }),
        ),
        (
            "all_optional",
            json!({
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": 0, "maximum": 5},
                    "b": short(3),
                    "c": {"type": "boolean"}
                },
                "additionalProperties": false
            }),
        ),
        (
            "top_level_array",
            json!({
                "type": "array",
                "items": {"type": "integer", "minimum": -5, "maximum": 5},
                "minItems": 1,
                "maxItems": 6
            }),
        ),
        ("top_level_integer", json!({"type": "integer", "minimum": 10, "maximum": 2000})),
    ]
}

pub fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("the test schema itself is invalid: {e}\n{schema}"))
}

/// Errors the independent validator finds in `text`, or why it does not parse.
///
/// One known leniency of llguidance's date formats is let through: second `60` at any time
/// of day (RFC 3339 allows a leap second only at 23:59:60 UTC) and February 29 in any year.
/// A document whose only errors are `date-time`/`date`/`time` format errors passes when it
/// validates with those two fields changed to `:59` and `-02-28`.
pub fn violations(check: &jsonschema::Validator, text: &str) -> Option<String> {
    let doc = match serde_json::from_str::<Value>(text) {
        Err(e) => return Some(format!("not JSON ({e})")),
        Ok(doc) => doc,
    };
    let errors: Vec<_> = check.iter_errors(&doc).collect();
    if errors.is_empty() {
        return None;
    }
    let dates_only = errors.iter().all(|e| {
        matches!(e.kind(), jsonschema::error::ValidationErrorKind::Format { format }
            if matches!(format.as_str(), "date-time" | "date" | "time"))
    });
    if dates_only && check.is_valid(&relax_dates(doc.clone())) {
        println!("llguidance date leniency: {text:?}");
        return None;
    }
    Some(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))
}

/// `doc` with leap seconds and February 29 moved to the day's valid neighbours.
fn relax_dates(doc: Value) -> Value {
    match doc {
        Value::String(s) => Value::String(s.replace(":60", ":59").replace("-02-29", "-02-28")),
        Value::Array(items) => Value::Array(items.into_iter().map(relax_dates).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, relax_dates(v))).collect()),
        other => other,
    }
}
