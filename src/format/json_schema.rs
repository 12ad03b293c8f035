//! JSON Schema payloads: the 5-byte header, then JSON text.
//!
//! Decoding strips the header and parses the body as JSON (numbers keep their
//! digits: the crate uses `arbitrary_precision`). The body is **not validated**
//! against the schema: producers using Confluent's serializers validate before
//! writing, validation would cost a JSON Schema engine per message, and a
//! document that violates its schema still has a well-defined JSON value (the
//! typed-column stage rejects values Postgres cannot convert, as for plain
//! JSON). A body that is not JSON is poison.
//!
//! Columns from the schema (`columns_from_json_schema`) read the root's
//! `properties`: `type` `string` → `text` (`format` `date-time` →
//! `timestamp with time zone`, `date` → `date`, `time` → `time`, `uuid` →
//! `uuid`), `integer` → `bigint`, `number` → `numeric` (JSON numbers are
//! decimal), `boolean` → `boolean`, `object` with `properties` → flattened as
//! `parent_child` (like Avro records), other objects → `jsonb`, `array` of
//! scalars → `type[]`, other arrays → `jsonb`; `type: ["null", T]` or a
//! property missing from `required` → nullable. `$ref`, `oneOf`/`anyOf` and
//! anything else → `jsonb`, nullable.

use serde_json::Value;

use super::{only_non_null, whole_value_column, ColumnSpec, Flattened, Parent};

/// A JSON Schema document (kept as JSON; used for columns only).
#[derive(Debug)]
pub struct JsonSchema {
    schema: Value,
}

impl JsonSchema {
    pub fn parse(text: &str) -> Result<Self, String> {
        let schema: Value =
            serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
        if !(schema.is_object() || schema.is_boolean()) {
            return Err("a JSON Schema must be an object or a boolean".into());
        }
        Ok(JsonSchema { schema })
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Parses the body after the header (no validation, see the module doc).
    pub fn decode(&self, body: &[u8]) -> Result<Value, String> {
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))
    }
}

/// Columns for a typed table following the schema's `properties`.
pub fn columns_from_json_schema(schema: &JsonSchema) -> Vec<ColumnSpec> {
    if schema.schema.get("properties").is_none() {
        return vec![whole_value_column("jsonb".into())];
    }
    let mut cols = Flattened::default();
    flatten(&schema.schema, &Parent::default(), &mut cols);
    cols.into_columns()
}

/// Adds the columns of `obj`'s properties; an `object` property with
/// `properties` is flattened in turn (up to 32 levels deep).
fn flatten(obj: &Value, parent: &Parent, out: &mut Flattened) {
    let Some(props) = obj.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // Declaration order is not kept by serde_json's map: sort for stability.
    let mut names: Vec<&String> = props.keys().collect();
    names.sort();
    for key in names {
        let prop = &props[key];
        let member = parent.member(key);
        let (ty, null_in_type) = main_type(prop);
        let nullable = parent.nullable || null_in_type || !required.contains(&key.as_str());
        if ty == Some("object") && prop.get("properties").is_some() && parent.depth < 32 {
            flatten(prop, &parent.nested(&member, nullable), out);
            continue;
        }
        out.push(
            parent,
            member,
            column_type(ty, prop),
            nullable || ty.is_none(),
        );
    }
}

/// The column type of a property that is not flattened.
fn column_type(ty: Option<&str>, prop: &Value) -> String {
    match ty {
        Some("array") => match prop.get("items").map(main_type) {
            Some((Some(t), _)) => scalar(t, prop.get("items").unwrap_or(&Value::Null))
                .map(|s| format!("{s}[]"))
                .unwrap_or_else(|| "jsonb".into()),
            _ => "jsonb".into(),
        },
        Some(t) => scalar(t, prop).unwrap_or("jsonb").to_string(),
        None => "jsonb".into(),
    }
}

/// The single non-null `type` of a property and whether `null` is allowed.
fn main_type(prop: &Value) -> (Option<&str>, bool) {
    match prop.get("type") {
        Some(Value::String(t)) => (Some(t.as_str()).filter(|t| *t != "null"), t == "null"),
        Some(Value::Array(ts)) => {
            only_non_null(ts.iter().filter_map(Value::as_str), |t| *t == "null")
        }
        _ => (None, true),
    }
}

fn scalar(ty: &str, prop: &Value) -> Option<&'static str> {
    Some(match ty {
        "string" => match prop.get("format").and_then(Value::as_str) {
            Some("date-time") => "timestamp with time zone",
            Some("date") => "date",
            Some("time") => "time",
            Some("uuid") => "uuid",
            _ => "text",
        },
        "integer" => "bigint",
        "number" => "numeric",
        "boolean" => "boolean",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::column_rows;
    use super::super::{decode, wire, Format, Schema, SchemaType};
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"{
      "type": "object",
      "required": ["id", "customer"],
      "properties": {
        "id": {"type": "integer"},
        "amount": {"type": "number"},
        "at": {"type": "string", "format": "date-time"},
        "note": {"type": ["null", "string"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "customer": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "any": {}
      }
    }"#;

    #[test]
    fn decodes_the_body_with_exact_numbers() {
        let s = Schema::parse(3, SchemaType::Json, SCHEMA, &[]).unwrap();
        let msg = wire::encode(3, br#"{"id": 12345678901234567890, "amount": 0.10}"#);
        let v = decode(Format::JsonSchema, &msg, &s).unwrap();
        assert_eq!(v["id"].to_string(), "12345678901234567890");
        assert_eq!(v["amount"].to_string(), "0.10");
        let e = decode(Format::JsonSchema, &wire::encode(3, b"{nope"), &s).unwrap_err();
        assert_eq!((e.reason(), e.schema_id()), ("undecodable", Some(3)));
        // Not validated: a document that violates the schema still decodes.
        assert_eq!(
            decode(Format::JsonSchema, &wire::encode(3, b"[1]"), &s).unwrap(),
            json!([1])
        );
        assert!(Schema::parse(4, SchemaType::Json, "not json", &[]).is_err());
    }

    #[test]
    fn columns() {
        let s = Schema::parse(5, SchemaType::Json, SCHEMA, &[]).unwrap();
        let cols = columns_from_json_schema(s.as_json_schema().unwrap());
        assert_eq!(
            column_rows(&cols),
            [
                ("amount", "numeric", "/amount", true),
                ("any", "jsonb", "/any", true),
                ("at", "timestamp with time zone", "/at", true),
                ("customer_name", "text", "/customer/name", false),
                ("id", "bigint", "/id", false),
                ("note", "text", "/note", true),
                ("tags", "text[]", "/tags", true),
            ]
        );
    }
}
