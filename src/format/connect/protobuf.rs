//! The Connect schema of a Protobuf change event: a schema Confluent's
//! `ProtobufConverter` registered for Debezium's envelope, read back the way
//! its `ProtobufData.toConnectSchema` reads it, so tables are created from
//! Protobuf change events as from JSON and Avro ones.
//!
//! What the converter keeps, and so what the sink can type exactly:
//! * `Decimal` → `confluent.type.Decimal` with `precision` and `scale` in the
//!   field's `(confluent.field_meta).params`: `numeric(p,s)`;
//! * Connect `Date`, `Time`, `Timestamp` (Debezium's
//!   `time.precision.mode=connect`) → `google.type.Date`,
//!   `google.type.TimeOfDay`, `google.protobuf.Timestamp`;
//! * `int8`/`int16` → `int32` with `connect.type` in the field's params;
//! * structs → nested messages named by the struct's last name component,
//!   which restores Debezium's `VariableScaleDecimal` and `Point`.
//!
//! What it drops: every other schema name and parameter — Debezium's
//! semantic types (`MicroTimestamp`, `ZonedTimestamp`, `Json`, `Uuid`, …)
//! and `__debezium.source.column.type` arrive as their carrier (`int64`,
//! `string`, …) and become `bigint`, `text`, … columns (docs/cdc.md).
//!
//! NULLs survive only when the converter writes presence
//! (`optional.for.nullables=true`: proto3 `optional`, or
//! `wrapper.for.nullables=true`: `google.protobuf.*Value`). Without either,
//! a NULL column value arrives as `0` or `""`; such a schema is refused
//! (every Debezium envelope has an optional `ts_ms` to tell by).

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind as PKind, MessageDescriptor, Value as PValue};

use super::value::POINT;
use super::{primitive, ConnectSchema, Field, Kind};

const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
const DATE: &str = "org.apache.kafka.connect.data.Date";
const TIME: &str = "org.apache.kafka.connect.data.Time";
const TIMESTAMP: &str = "org.apache.kafka.connect.data.Timestamp";

/// The Connect schema of a change event's (or key's) message type.
pub fn from_protobuf(message: &MessageDescriptor) -> Result<ConnectSchema, String> {
    if let Some(ts) = message.get_field_by_name("ts_ms") {
        if message.get_field_by_name("op").is_some() && !ts.supports_presence() {
            return Err(format!(
                "{} was written without NULLs (its optional `ts_ms` has no presence): \
                 a NULL column would arrive as 0 or \"\"; set the converter's \
                 `optional.for.nullables=true` (or `wrapper.for.nullables=true`)",
                message.full_name()
            ));
        }
    }
    struct_schema(message, &mut Vec::new())
}

/// `seen`: the message types being read, outer first (a recursive type
/// has no table).
fn struct_schema(
    message: &MessageDescriptor,
    seen: &mut Vec<String>,
) -> Result<ConnectSchema, String> {
    if seen.iter().any(|s| s == message.full_name()) {
        return Err(format!("{} is recursive", message.full_name()));
    }
    seen.push(message.full_name().to_string());
    let mut fields = Vec::new();
    for f in message.fields() {
        if f.containing_oneof().is_some_and(|o| !o.is_synthetic()) {
            return Err(format!(
                "{}.{} is in a oneof, which a Connect schema of a change event never has",
                message.full_name(),
                f.name()
            ));
        }
        let schema = field_schema(&f, seen).map_err(|e| format!("field `{}`: {e}", f.name()))?;
        fields.push(Field {
            name: f.name().to_string(),
            schema,
        });
    }
    seen.pop();
    let name = match message.name() {
        "VariableScaleDecimal" if has_fields(&fields, &["scale", "value"]) => {
            "io.debezium.data.VariableScaleDecimal".to_string()
        }
        "Point" if has_fields(&fields, &["x", "y"]) => POINT.to_string(),
        other => other.to_string(),
    };
    Ok(ConnectSchema {
        name: Some(name),
        ..primitive(Kind::Struct(fields))
    })
}

fn has_fields(fields: &[Field], names: &[&str]) -> bool {
    names.iter().all(|n| fields.iter().any(|f| f.name == *n))
}

fn field_schema(f: &FieldDescriptor, seen: &mut Vec<String>) -> Result<ConnectSchema, String> {
    let params = field_meta_params(f);
    if f.is_map() {
        let PKind::Message(entry) = f.kind() else {
            return Err("a map without an entry type".into());
        };
        let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let mut s = primitive(Kind::Map(
            Box::new(field_schema(&k, seen)?),
            Box::new(field_schema(&v, seen)?),
        ));
        s.optional = true;
        return Ok(s);
    }
    let mut s = value_schema(f, &params, seen)?;
    if f.is_list() {
        // A repeated field cannot hold NULL elements, and an empty list
        // is how the converter writes both `[]` and NULL.
        s.optional = true;
        let mut list = primitive(Kind::Array(Box::new(s)));
        list.optional = true;
        return Ok(list);
    }
    s.optional = s.optional || f.supports_presence();
    Ok(s)
}

/// A singular value's schema (before presence decides `optional`).
fn value_schema(
    f: &FieldDescriptor,
    params: &BTreeMap<String, String>,
    seen: &mut Vec<String>,
) -> Result<ConnectSchema, String> {
    Ok(match f.kind() {
        PKind::Int32 | PKind::Sint32 | PKind::Sfixed32 => {
            match params.get("connect.type").map(String::as_str) {
                Some("int8") => primitive(Kind::Int8),
                Some("int16") => primitive(Kind::Int16),
                _ => primitive(Kind::Int32),
            }
        }
        PKind::Int64 | PKind::Sint64 | PKind::Sfixed64 | PKind::Uint32 | PKind::Fixed32 => {
            primitive(Kind::Int64)
        }
        PKind::Uint64 | PKind::Fixed64 => {
            return Err(format!(
                "{:?} does not fit a Connect int64 (no Connect converter writes it)",
                f.kind()
            ))
        }
        PKind::Float => primitive(Kind::Float32),
        PKind::Double => primitive(Kind::Float64),
        PKind::Bool => primitive(Kind::Boolean),
        PKind::String | PKind::Enum(_) => primitive(Kind::String),
        PKind::Bytes => primitive(Kind::Bytes),
        PKind::Message(m) => return message_value(&m, params, seen),
    })
}

fn message_value(
    m: &MessageDescriptor,
    params: &BTreeMap<String, String>,
    seen: &mut Vec<String>,
) -> Result<ConnectSchema, String> {
    let logical = |kind, name: &str| ConnectSchema {
        name: Some(name.to_string()),
        ..primitive(kind)
    };
    let mut s = match m.full_name() {
        "confluent.type.Decimal" => {
            let mut s = logical(Kind::Bytes, DECIMAL);
            let scale = params.get("scale").cloned().unwrap_or_else(|| "0".into());
            s.parameters.insert("scale".into(), scale);
            if let Some(p) = params.get("precision") {
                s.parameters
                    .insert("connect.decimal.precision".into(), p.clone());
            }
            s
        }
        "google.type.Date" => logical(Kind::Int32, DATE),
        "google.type.TimeOfDay" => logical(Kind::Int32, TIME),
        "google.protobuf.Timestamp" => logical(Kind::Int64, TIMESTAMP),
        "google.protobuf.DoubleValue" => primitive(Kind::Float64),
        "google.protobuf.FloatValue" => primitive(Kind::Float32),
        "google.protobuf.Int64Value" | "google.protobuf.UInt32Value" => primitive(Kind::Int64),
        "google.protobuf.Int32Value" => primitive(Kind::Int32),
        "google.protobuf.BoolValue" => primitive(Kind::Boolean),
        "google.protobuf.StringValue" => primitive(Kind::String),
        "google.protobuf.BytesValue" => primitive(Kind::Bytes),
        _ => struct_schema(m, seen)?,
    };
    s.optional = true;
    Ok(s)
}

/// `(confluent.field_meta).params`: where the converter keeps a decimal's
/// precision and scale and an `int8`/`int16`'s Connect type.
fn field_meta_params(f: &FieldDescriptor) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(ext) = f
        .parent_pool()
        .get_extension_by_name("confluent.field_meta")
    else {
        return out;
    };
    let options = f.options();
    if !options.has_extension(&ext) {
        return out;
    }
    if let PValue::Message(meta) = &*options.get_extension(&ext) {
        if let Some(params) = meta.get_field_by_name("params") {
            if let PValue::Map(entries) = &*params {
                for (k, v) in entries {
                    if let (prost_reflect::MapKey::String(k), PValue::String(v)) = (k, v) {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::{DynamicMessage, Value as P};
    use serde_json::json;

    use super::*;
    use crate::format::connect::{convert, debezium_shape};
    use crate::format::protobuf::ProtoSchema;

    /// A Debezium envelope as Confluent's ProtobufConverter registers it
    /// with `optional.for.nullables=true`: structs as nested messages named
    /// by their last name component, optional fields as proto3 `optional`,
    /// a decimal's precision and scale and an int16 in field options.
    const ENVELOPE: &str = r#"syntax = "proto3";
package kpgs.public.orders;

import "confluent/meta.proto";
import "confluent/type/decimal.proto";
import "google/protobuf/timestamp.proto";
import "google/type/date.proto";
import "google/type/timeofday.proto";

message Envelope {
  optional Value before = 1;
  optional Value after = 2;
  Source source = 3;
  string op = 4;
  optional int64 ts_ms = 5;

  message Value {
    int32 id = 1;
    optional confluent.type.Decimal amount = 2 [(confluent.field_meta) = {
      params: [
        {
          key: "precision",
          value: "12"
        },
        {
          key: "scale",
          value: "2"
        }
      ]
    }];
    optional int32 qty = 3 [(confluent.field_meta) = {
      params: [
        {
          key: "connect.type",
          value: "int16"
        }
      ]
    }];
    optional google.type.Date day = 4;
    optional google.type.TimeOfDay at = 5;
    optional google.protobuf.Timestamp stamp = 6;
    optional int64 micros = 7;
    optional string note = 8;
    repeated string tags = 9;
    optional VariableScaleDecimal free = 10;

    message VariableScaleDecimal {
      int32 scale = 1;
      bytes value = 2;
    }
  }
  message Source {
    string connector = 1;
    optional int64 lsn = 2;
  }
}
"#;

    fn envelope() -> (ProtoSchema, MessageDescriptor) {
        let s = ProtoSchema::compile(1, ENVELOPE, &[]).unwrap();
        let m = s.connect_root().unwrap();
        (s, m)
    }

    #[test]
    fn columns_keep_what_the_converter_kept() {
        let (_, m) = envelope();
        let value = from_protobuf(&m).unwrap();
        let key = ConnectSchema {
            kind: Kind::Struct(vec![Field {
                name: "id".into(),
                schema: primitive(Kind::Int32),
            }]),
            ..primitive(Kind::Int32)
        };
        let shape = debezium_shape(&value, Some(&key)).unwrap();
        let cols: Vec<(&str, &str, bool)> = shape
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.pg_type.as_str(), c.nullable))
            .collect();
        assert_eq!(
            cols,
            [
                ("id", "integer", false),
                ("amount", "numeric(12,2)", true),
                ("qty", "smallint", true),
                ("day", "date", true),
                ("at", "time(3)", true),
                ("stamp", "timestamp(3)", true),
                // Debezium's MicroTimestamp: the converter dropped the name.
                ("micros", "bigint", true),
                ("note", "text", true),
                ("tags", "text[]", true),
                ("free", "numeric", true),
            ]
        );
        assert_eq!(shape.key, ["id"]);
    }

    /// A message of type `name` in `s`'s pool with `fields` set.
    fn message(s: &ProtoSchema, name: &str, fields: &[(&str, P)]) -> DynamicMessage {
        let mut x = DynamicMessage::new(s.pool().get_message_by_name(name).unwrap());
        for (k, v) in fields {
            x.set_field_by_name(k, v.clone());
        }
        x
    }

    /// The encoded envelope of a create whose row has these fields set.
    fn create_event(s: &ProtoSchema, fields: &[(&str, P)]) -> Vec<u8> {
        let row = message(s, "kpgs.public.orders.Envelope.Value", fields);
        let env = message(
            s,
            "kpgs.public.orders.Envelope",
            &[
                ("after", P::Message(row)),
                ("op", P::String("c".into())),
                ("ts_ms", P::I64(1)),
            ],
        );
        env.encode_to_vec()
    }

    /// A row of every kind the converter writes: a decimal, a date, a time,
    /// a timestamp and Debezium's VariableScaleDecimal.
    fn typed_row(s: &ProtoSchema) -> Vec<(&'static str, P)> {
        let sub = |name: &str, fields: &[(&str, P)]| P::Message(message(s, name, fields));
        // -1234.56 at scale 2: unscaled -123456.
        let unscaled = num_bigint::BigInt::from(-123_456).to_signed_bytes_be();
        vec![
            ("id", P::I32(7)),
            (
                "amount",
                sub(
                    "confluent.type.Decimal",
                    &[
                        ("value", P::Bytes(unscaled.into())),
                        ("precision", P::U32(12)),
                        ("scale", P::I32(2)),
                    ],
                ),
            ),
            (
                "day",
                sub(
                    "google.type.Date",
                    &[
                        ("year", P::I32(2024)),
                        ("month", P::I32(2)),
                        ("day", P::I32(29)),
                    ],
                ),
            ),
            (
                "at",
                sub(
                    "google.type.TimeOfDay",
                    &[
                        ("hours", P::I32(23)),
                        ("minutes", P::I32(59)),
                        ("seconds", P::I32(58)),
                        ("nanos", P::I32(123_000_000)),
                    ],
                ),
            ),
            (
                "stamp",
                sub(
                    "google.protobuf.Timestamp",
                    &[
                        ("seconds", P::I64(1_700_000_000)),
                        ("nanos", P::I32(5_000_000)),
                    ],
                ),
            ),
            (
                "free",
                sub(
                    "kpgs.public.orders.Envelope.Value.VariableScaleDecimal",
                    &[
                        ("scale", P::I32(3)),
                        ("value", P::Bytes(vec![0x30, 0x39].into())),
                    ],
                ),
            ),
        ]
    }

    #[test]
    fn values_read_as_postgres_reads_them() {
        let (s, m) = envelope();
        let schema = from_protobuf(&m).unwrap();
        let fields = typed_row(&s);
        let decoded = s.decode(&[0], &create_event(&s, &fields)).unwrap();
        assert_eq!(
            convert(decoded, &schema)["after"],
            json!({
                "id": 7,
                "amount": -1234.56,
                "qty": null,
                "day": "2024-02-29",
                "at": "23:59:58.123000",
                "stamp": "2023-11-14T22:13:20.005",
                "micros": null,
                "note": null,
                "tags": [],
                "free": 12.345,
            })
        );
    }

    #[test]
    fn a_schema_without_nulls_is_refused_naming_the_setting() {
        let text = ENVELOPE.replace("optional int64 ts_ms", "int64 ts_ms");
        let s = ProtoSchema::compile(1, &text, &[]).unwrap();
        let e = from_protobuf(&s.connect_root().unwrap()).unwrap_err();
        assert!(e.contains("optional.for.nullables=true"), "{e}");
    }

    #[test]
    fn plain_scalars_are_not_null_and_oneofs_are_refused() {
        let (_, m) = envelope();
        let value = from_protobuf(&m).unwrap();
        let row = value.field("after").unwrap();
        assert!(!row.field("id").unwrap().optional);
        let text = ENVELOPE.replace(
            "    optional string note = 8;",
            "    oneof choice { string note = 8; int64 other = 11; }",
        );
        let s = ProtoSchema::compile(1, &text, &[]).unwrap();
        let e = from_protobuf(&s.connect_root().unwrap()).unwrap_err();
        assert!(e.contains("oneof"), "{e}");
    }
}
