//! Protobuf → JSON: the registry's `.proto` text (plus its references) is
//! compiled at run time with `protox` (pure Rust, no `protoc`) into a
//! `prost-reflect` descriptor pool; messages decode to `DynamicMessage`, which
//! this module walks itself so the JSON follows the same rules as Avro (the
//! protobuf "canonical JSON" mapping would write int64 as strings, bytes as
//! base64 and use lowerCamelCase names, which is not what typed columns want).
//!
//! # Mapping (deterministic; the hash is over this JSON)
//!
//! | Protobuf                                   | JSON                                               | column type            |
//! |--------------------------------------------|----------------------------------------------------|------------------------|
//! | field names                                | as written in the .proto (not lowerCamelCase)      |                        |
//! | int32, sint32, sfixed32                    | number                                             | `integer`              |
//! | int64, sint64, sfixed64                    | number (all digits, not a string)                  | `bigint`               |
//! | uint32, fixed32                            | number                                             | `bigint`               |
//! | uint64, fixed64                            | number                                             | `numeric(20,0)`        |
//! | float, double                              | as Avro: shortest round-trip text; NaN/±Inf strings | `real` / `double precision` |
//! | bool, string                               | `true`/`false`, string                             | `boolean`, `text`      |
//! | bytes                                      | `"\\x"` + lowercase hex                            | `bytea`                |
//! | enum                                       | the value's name; a number the enum does not declare (open enums) → that number | `text` |
//! | message                                    | object (flattened into `parent_child` columns like Avro records) | flattened |
//! | repeated                                   | array (empty when none)                            | scalars → `type[]`, messages → `jsonb` |
//! | map                                        | object; keys as strings (`"1"`, `"true"`)          | `jsonb`                |
//! | google.protobuf.Timestamp                  | RFC 3339 UTC with 0, 3, 6 or 9 fraction digits and `Z` (as protobuf's JSON mapping) | `timestamp with time zone` |
//! | google.protobuf.Duration                   | ISO 8601 `"PT{s}S"` / `"PT{s}.{fff}S"` (0/3/6/9 digits, sign on the seconds: `"PT-1.500S"`) | `interval` |
//! | google.protobuf.*Value wrappers            | the wrapped value (or `null` when unset)           | the wrapped type       |
//! | google.protobuf.Struct / Value / ListValue | the JSON they describe                             | `jsonb`                |
//! | google.protobuf.Empty                      | `{}`                                               | `jsonb`                |
//! | google.protobuf.Any                        | `{"type_url": …, "value": "\\x…"}`                 | `jsonb`                |
//! | google.protobuf.FieldMask                  | the paths joined by `,`                            | `text`                 |
//!
//! Presence: a field that tracks presence (message fields, `oneof` members,
//! proto3 `optional`, every singular proto2 field) is `null` when unset. A
//! proto3 scalar without presence is never `null`: unset means its default
//! (`0`, `""`, `false`, the first enum value), so typed columns get `0`, not
//! NULL. Unknown fields (numbers the writer schema does not declare) are
//! dropped. The message type is chosen by the message-index path of the wire
//! format (`[0]` = first top-level message; `[1, 0]` = first nested message
//! of the second top-level one; map-entry types count as nested types, as in
//! Confluent's serializers).
//!
//! Schema texts may also be a base64 `FileDescriptorProto` (what Python
//! confluent-kafka registers; Apicurio returns it unchanged).
//!
//! References: each reference's `name` is the import path the schema uses
//! (`import "money.proto";`); the well-known `google/protobuf/*.proto` files
//! are built in and need no reference.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value as PValue,
};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::{Map, Value};

use super::{bytea_hex, float_json};
use super::{ColumnSpec, Flattened, Parent, Reference};

/// A compiled Protobuf writer schema.
#[derive(Debug)]
pub struct ProtoSchema {
    pool: DescriptorPool,
    root: String,
}

struct MemoryResolver(HashMap<String, String>);

impl FileResolver for MemoryResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let Some(src) = self.0.get(name) else {
            return Err(protox::Error::file_not_found(name));
        };
        match File::from_source(name, src) {
            Ok(f) => Ok(f),
            Err(parse_error) => match serialized_descriptor(src) {
                Some(mut fdp) => {
                    fdp.name = Some(name.to_string());
                    Ok(File::from_file_descriptor_proto(fdp))
                }
                None => Err(parse_error),
            },
        }
    }
}

/// Files Confluent's serializers import without registering them as
/// references (its `KNOWN_DEPENDENCIES`) that `protox` does not bring:
/// the types its ProtobufConverter writes Connect's decimals, dates and
/// times as, and the option that carries their parameters. A reference the
/// registry names takes precedence.
fn known_files() -> HashMap<String, String> {
    [
        (
            "confluent/meta.proto",
            include_str!("known_protos/confluent/meta.proto"),
        ),
        (
            "confluent/type/decimal.proto",
            include_str!("known_protos/confluent/type/decimal.proto"),
        ),
        (
            "google/type/date.proto",
            include_str!("known_protos/google/type/date.proto"),
        ),
        (
            "google/type/timeofday.proto",
            include_str!("known_protos/google/type/timeofday.proto"),
        ),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_string(), text.to_string()))
    .collect()
}

/// Some producers (Python confluent-kafka's ProtobufSerializer) register the
/// schema as a base64-encoded `FileDescriptorProto` instead of .proto text;
/// Confluent's registry converts it, Apicurio stores and returns it as is.
fn serialized_descriptor(text: &str) -> Option<prost_types::FileDescriptorProto> {
    use base64::Engine as _;
    use prost::Message as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()
}

impl ProtoSchema {
    /// Compiles the schema text; `references` maps import paths to .proto texts.
    pub fn compile(id: u32, text: &str, references: &[Reference]) -> Result<Self, String> {
        let root = format!("kafka-pg-sink-registry-schema-{id}.proto");
        let mut files: HashMap<String, String> = references
            .iter()
            .map(|r| (r.name.clone(), r.text.clone()))
            .collect();
        files.insert(root.clone(), text.to_string());
        let mut chain = ChainFileResolver::new();
        chain.add(MemoryResolver(files));
        chain.add(MemoryResolver(known_files()));
        chain.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(chain);
        compiler.include_imports(true);
        compiler.open_file(&root).map_err(|e| e.to_string())?;
        let pool = compiler.descriptor_pool();
        let schema = ProtoSchema { pool, root };
        if schema.file_messages().next().is_none() {
            return Err("the schema declares no message type".into());
        }
        Ok(schema)
    }

    fn file_messages(&self) -> impl Iterator<Item = MessageDescriptor> + '_ {
        self.pool
            .get_file_by_name(&self.root)
            .into_iter()
            .flat_map(|f| f.messages().collect::<Vec<_>>())
    }

    /// The message type at a message-index path (`[0]` = first top-level).
    pub fn message(&self, indexes: &[usize]) -> Option<MessageDescriptor> {
        let (first, rest) = indexes.split_first()?;
        let mut m = self.file_messages().nth(*first)?;
        for &i in rest {
            let child = m.child_messages().nth(i)?;
            m = child;
        }
        Some(m)
    }

    /// The one top-level message a Connect converter writes (the value or
    /// key struct; the structs it holds are nested in it).
    pub fn connect_root(&self) -> Result<MessageDescriptor, String> {
        let mut top = self.file_messages();
        match (top.next(), top.next()) {
            (Some(m), None) => Ok(m),
            _ => Err(
                "a schema written by Connect's ProtobufConverter declares one top-level message"
                    .into(),
            ),
        }
    }

    /// The message-index path of a message type by full name (for encoders).
    pub fn message_indexes(&self, full_name: &str) -> Option<Vec<usize>> {
        fn find(m: &MessageDescriptor, name: &str, path: &mut Vec<usize>) -> bool {
            if m.full_name() == name {
                return true;
            }
            for (i, c) in m.child_messages().enumerate() {
                path.push(i);
                if find(&c, name, path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        for (i, m) in self.file_messages().enumerate() {
            let mut path = vec![i];
            if find(&m, full_name, &mut path) {
                return Some(path);
            }
        }
        None
    }

    /// The compiled descriptors (the schema and everything it imports).
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Decodes a message body (after the message-index list).
    pub fn decode(&self, indexes: &[usize], body: &[u8]) -> Result<Value, String> {
        let desc = self
            .message(indexes)
            .ok_or_else(|| format!("message index {indexes:?} names no message type"))?;
        let msg = DynamicMessage::decode(desc.clone(), body)
            .map_err(|e| format!("{}: {e}", desc.full_name()))?;
        message_json(&msg)
    }
}

fn message_json(msg: &DynamicMessage) -> Result<Value, String> {
    let desc = msg.descriptor();
    if let Some(v) = well_known(desc.full_name(), msg)? {
        return Ok(v);
    }
    let mut out = Map::new();
    for field in desc.fields() {
        let v = if field.supports_presence() && !msg.has_field(&field) {
            Value::Null
        } else {
            field_json(&field, &msg.get_field(&field))?
        };
        out.insert(field.name().to_string(), v);
    }
    Ok(Value::Object(out))
}

fn field_json(field: &FieldDescriptor, v: &PValue) -> Result<Value, String> {
    match v {
        PValue::List(items) => items
            .iter()
            .map(|i| value_json(&field.kind(), i))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        PValue::Map(entries) => {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                _ => return Err(format!("map field {} without an entry type", field.name())),
            };
            let mut out = Map::new();
            for (k, v) in sorted_entries(entries) {
                out.insert(k, value_json(&value_kind, v)?);
            }
            Ok(Value::Object(out))
        }
        other => value_json(&field.kind(), other),
    }
}

/// Map entries with their keys as JSON object keys, sorted so the JSON (and
/// any non-canonical rendering) is stable.
fn sorted_entries(entries: &HashMap<MapKey, PValue>) -> Vec<(String, &PValue)> {
    let mut keyed: Vec<(String, &PValue)> = entries.iter().map(|(k, v)| (map_key(k), v)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(i) => i.to_string(),
        MapKey::I64(i) => i.to_string(),
        MapKey::U32(i) => i.to_string(),
        MapKey::U64(i) => i.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn value_json(kind: &Kind, v: &PValue) -> Result<Value, String> {
    Ok(match v {
        PValue::Bool(b) => Value::Bool(*b),
        PValue::I32(i) => Value::from(*i),
        PValue::I64(i) => Value::from(*i),
        PValue::U32(i) => Value::from(*i),
        PValue::U64(i) => Value::from(*i),
        PValue::F32(f) => float_json(*f),
        PValue::F64(f) => float_json(*f),
        PValue::String(s) => Value::String(s.clone()),
        PValue::Bytes(b) => bytea_hex(b),
        PValue::EnumNumber(n) => match kind.as_enum().and_then(|e| e.get_value(*n)) {
            Some(ev) => Value::String(ev.name().to_string()),
            None => Value::from(*n),
        },
        PValue::Message(m) => message_json(m)?,
        PValue::List(items) => Value::Array(
            items
                .iter()
                .map(|i| value_json(kind, i))
                .collect::<Result<_, _>>()?,
        ),
        PValue::Map(_) => return Err("nested map value".into()),
    })
}

fn get<'a>(msg: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, PValue>> {
    msg.get_field_by_name(name)
}

fn get_i64(msg: &DynamicMessage, name: &str) -> i64 {
    match get(msg, name).as_deref() {
        Some(PValue::I64(i)) => *i,
        Some(PValue::I32(i)) => i64::from(*i),
        _ => 0,
    }
}

/// 0, 3, 6 or 9 fraction digits, like protobuf's JSON mapping.
fn fraction(nanos: u32) -> String {
    if nanos == 0 {
        String::new()
    } else if nanos.is_multiple_of(1_000_000) {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1000) {
        format!(".{:06}", nanos / 1000)
    } else {
        format!(".{nanos:09}")
    }
}

/// The JSON of a well-known type (module-doc table); `None` for any other
/// message type, which is written as an object.
fn well_known(name: &str, msg: &DynamicMessage) -> Result<Option<Value>, String> {
    let to_json: fn(&DynamicMessage) -> Result<Value, String> = match name {
        "google.protobuf.Timestamp" => timestamp_json,
        "google.protobuf.Duration" => duration_json,
        "google.protobuf.DoubleValue"
        | "google.protobuf.FloatValue"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.BoolValue"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue" => wrapper_json,
        "google.protobuf.Struct" => struct_json,
        "google.protobuf.Value" => struct_value_json,
        "google.protobuf.ListValue" => list_value_json,
        "google.protobuf.Empty" => |_| Ok(Value::Object(Map::new())),
        "google.protobuf.Any" => any_json,
        "google.protobuf.FieldMask" => field_mask_json,
        _ => return Ok(None),
    };
    to_json(msg).map(Some)
}

fn timestamp_json(msg: &DynamicMessage) -> Result<Value, String> {
    let secs = get_i64(msg, "seconds");
    let nanos = get_i64(msg, "nanos");
    let t = u32::try_from(nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(secs, n))
        .ok_or_else(|| format!("Timestamp {secs}s {nanos}ns out of range"))?;
    Ok(Value::String(
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    ))
}

fn duration_json(msg: &DynamicMessage) -> Result<Value, String> {
    let secs = get_i64(msg, "seconds");
    let nanos = get_i64(msg, "nanos");
    if (secs > 0 && nanos < 0) || (secs < 0 && nanos > 0) || nanos.abs() >= 1_000_000_000 {
        return Err(format!("Duration {secs}s {nanos}ns is not normalized"));
    }
    let sign = if secs < 0 || nanos < 0 { "-" } else { "" };
    Ok(Value::String(format!(
        "PT{sign}{}{}S",
        secs.unsigned_abs(),
        fraction(nanos.unsigned_abs() as u32)
    )))
}

/// `google.protobuf.*Value` wrappers: the wrapped value itself.
fn wrapper_json(msg: &DynamicMessage) -> Result<Value, String> {
    let field = msg
        .descriptor()
        .get_field_by_name("value")
        .ok_or("wrapper without a value field")?;
    field_json(&field, &msg.get_field(&field))
}

/// A JSON object: `fields` maps names to `google.protobuf.Value`s.
fn struct_json(msg: &DynamicMessage) -> Result<Value, String> {
    let fields = get(msg, "fields");
    let Some(PValue::Map(m)) = fields.as_deref() else {
        return Ok(Value::Object(Map::new()));
    };
    let mut out = Map::new();
    for (k, v) in sorted_entries(m) {
        out.insert(k, message_or_null(v)?);
    }
    Ok(Value::Object(out))
}

/// `google.protobuf.Value`: whichever member of its `kind` oneof is set.
fn struct_value_json(msg: &DynamicMessage) -> Result<Value, String> {
    let Some((f, v)) = msg.fields().next() else {
        return Ok(Value::Null);
    };
    Ok(match (f.name(), v) {
        ("null_value", _) => Value::Null,
        ("number_value", PValue::F64(x)) => float_json(*x),
        ("string_value", PValue::String(s)) => Value::String(s.clone()),
        ("bool_value", PValue::Bool(b)) => Value::Bool(*b),
        (_, PValue::Message(m)) => message_json(m)?,
        _ => Value::Null,
    })
}

/// A JSON array of `google.protobuf.Value`s.
fn list_value_json(msg: &DynamicMessage) -> Result<Value, String> {
    match get(msg, "values").as_deref() {
        Some(PValue::List(items)) => items
            .iter()
            .map(message_or_null)
            .collect::<Result<_, _>>()
            .map(Value::Array),
        _ => Ok(Value::Array(vec![])),
    }
}

fn message_or_null(v: &PValue) -> Result<Value, String> {
    match v {
        PValue::Message(m) => message_json(m),
        _ => Ok(Value::Null),
    }
}

fn any_json(msg: &DynamicMessage) -> Result<Value, String> {
    let url = match get(msg, "type_url").as_deref() {
        Some(PValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let value = match get(msg, "value").as_deref() {
        Some(PValue::Bytes(b)) => bytea_hex(b),
        _ => bytea_hex(&[]),
    };
    Ok(serde_json::json!({"type_url": url, "value": value}))
}

/// The paths joined by `,`.
fn field_mask_json(msg: &DynamicMessage) -> Result<Value, String> {
    Ok(match get(msg, "paths").as_deref() {
        Some(PValue::List(items)) => Value::String(
            items
                .iter()
                .filter_map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => Value::String(String::new()),
    })
}

/// Columns for a typed table following a message type (rules as for Avro:
/// `parent_child` names, shallowest-then-first keeps a colliding name, 63-byte
/// limit; types from the module-doc table).
pub fn columns_from_protobuf(desc: &MessageDescriptor) -> Vec<ColumnSpec> {
    let mut cols = Flattened::default();
    let mut stack = vec![desc.full_name().to_string()];
    flatten(desc, &Parent::default(), &mut stack, &mut cols);
    cols.into_columns()
}

/// Adds the columns of `desc`'s fields; a singular message field is flattened
/// in turn unless it maps to a scalar (well-known types) or its type is
/// already on `stack` (recursive: one `jsonb` column).
fn flatten(
    desc: &MessageDescriptor,
    parent: &Parent,
    stack: &mut Vec<String>,
    out: &mut Flattened,
) {
    for field in desc.fields() {
        let member = parent.member(field.name());
        let nullable = parent.nullable || (field.supports_presence() && !field.is_list());
        if let (Kind::Message(m), false, false) = (field.kind(), field.is_list(), field.is_map()) {
            if scalar_wkt(m.full_name()).is_none() && !stack.iter().any(|s| s == m.full_name()) {
                stack.push(m.full_name().to_string());
                flatten(&m, &parent.nested(&member, nullable), stack, out);
                stack.pop();
                continue;
            }
        }
        out.push(parent, member, column_type(&field), nullable);
    }
}

/// The column type of a field that is not flattened.
fn column_type(field: &FieldDescriptor) -> String {
    if field.is_map() {
        "jsonb".to_string()
    } else if field.is_list() {
        match scalar_type(&field.kind()) {
            Some(t) => format!("{t}[]"),
            None => "jsonb".into(),
        }
    } else {
        scalar_type(&field.kind()).unwrap_or_else(|| "jsonb".into())
    }
}

/// The column type of a well-known type that maps to a scalar.
fn scalar_wkt(full_name: &str) -> Option<&'static str> {
    Some(match full_name {
        "google.protobuf.Timestamp" => "timestamp with time zone",
        "google.protobuf.Duration" => "interval",
        "google.protobuf.DoubleValue" => "double precision",
        "google.protobuf.FloatValue" => "real",
        "google.protobuf.Int64Value" => "bigint",
        "google.protobuf.UInt64Value" => "numeric(20,0)",
        "google.protobuf.Int32Value" => "integer",
        "google.protobuf.UInt32Value" => "bigint",
        "google.protobuf.BoolValue" => "boolean",
        "google.protobuf.StringValue" | "google.protobuf.FieldMask" => "text",
        "google.protobuf.BytesValue" => "bytea",
        "google.protobuf.Struct"
        | "google.protobuf.Value"
        | "google.protobuf.ListValue"
        | "google.protobuf.Empty"
        | "google.protobuf.Any" => "jsonb",
        _ => return None,
    })
}

fn scalar_type(kind: &Kind) -> Option<String> {
    Some(
        match kind {
            Kind::Double => "double precision",
            Kind::Float => "real",
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "integer",
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint32 | Kind::Fixed32 => "bigint",
            Kind::Uint64 | Kind::Fixed64 => "numeric(20,0)",
            Kind::Bool => "boolean",
            Kind::String | Kind::Enum(_) => "text",
            Kind::Bytes => "bytea",
            Kind::Message(m) => match scalar_wkt(m.full_name()) {
                Some("jsonb") | None => return None,
                Some(t) => t,
            },
        }
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::column_rows;
    use super::super::{decode, hash_view, wire, Format, Schema, SchemaType};
    use super::*;
    use prost::Message as _;
    use serde_json::json;

    const ORDER: &str = r#"
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/wrappers.proto";
import "google/protobuf/struct.proto";
import "money.proto";

enum Status { NEW = 0; PAID = 1; }

message Order {
  int64 id = 1;
  uint64 big = 2;
  int32 qty = 3;
  sint64 delta = 4;
  float f = 5;
  double d = 6;
  bool ok = 7;
  string name = 8;
  bytes raw = 9;
  Status status = 10;
  optional string note = 11;
  google.protobuf.Timestamp ts = 12;
  google.protobuf.Duration took = 13;
  google.protobuf.Int64Value maybe = 14;
  google.protobuf.Struct extra = 15;
  repeated string tags = 16;
  map<string, int64> attrs = 17;
  Customer customer = 18;
  common.Money price = 19;
  oneof pay { string card = 20; string iban = 21; }
  repeated Line lines = 22;
  message Customer { int64 cid = 1; Address address = 2; }
  message Address { string city = 1; }
  message Line { string sku = 1; }
}

message Other { string x = 1; }
"#;
    const MONEY: &str = r#"
syntax = "proto3";
package common;
message Money { string currency = 1; int64 units = 2; }
"#;

    fn order_schema(id: u32) -> Schema {
        Schema::parse(
            id,
            SchemaType::Protobuf,
            ORDER,
            &[Reference {
                name: "money.proto".into(),
                text: MONEY.into(),
            }],
        )
        .unwrap()
    }

    fn msg(s: &Schema, name: &str) -> DynamicMessage {
        let desc = s
            .as_protobuf()
            .unwrap()
            .pool()
            .get_message_by_name(name)
            .unwrap();
        DynamicMessage::new(desc)
    }

    fn frame(s: &Schema, m: &DynamicMessage) -> Vec<u8> {
        let path = s
            .as_protobuf()
            .unwrap()
            .message_indexes(m.descriptor().full_name())
            .unwrap();
        wire::encode_protobuf(s.id(), &path, &m.encode_to_vec())
    }

    /// A message of type `name` with `fields` set, in this order.
    fn msg_with(s: &Schema, name: &str, fields: Vec<(&str, PValue)>) -> DynamicMessage {
        let mut m = msg(s, name);
        for (field, v) in fields {
            m.set_field_by_name(field, v);
        }
        m
    }

    /// Frames `m` with its own message-index path and decodes it.
    fn roundtrip(s: &Schema, m: &DynamicMessage) -> Value {
        decode(Format::Protobuf, &frame(s, m), s).unwrap()
    }

    /// `id` … `note` of `shop.Order`: scalars, bytes, an enum, an optional.
    fn scalar_fields() -> Vec<(&'static str, PValue)> {
        vec![
            ("id", PValue::I64(9_007_199_254_740_993)),
            ("big", PValue::U64(u64::MAX)),
            ("qty", PValue::I32(-3)),
            ("delta", PValue::I64(-5)),
            ("f", PValue::F32(0.1)),
            ("d", PValue::F64(f64::INFINITY)),
            ("ok", PValue::Bool(true)),
            ("name", PValue::String("Zoë".into())),
            (
                "raw",
                PValue::Bytes(prost::bytes::Bytes::from_static(&[0, 0xab])),
            ),
            ("status", PValue::EnumNumber(1)),
            ("note", PValue::String("".into())), // set, even if empty
        ]
    }

    /// `ts` … `extra`: well-known types.
    fn well_known_fields(s: &Schema) -> Vec<(&'static str, PValue)> {
        let ts = msg_with(
            s,
            "google.protobuf.Timestamp",
            vec![
                ("seconds", PValue::I64(1_714_979_289)),
                ("nanos", PValue::I32(123_000_000)),
            ],
        );
        let took = msg_with(
            s,
            "google.protobuf.Duration",
            vec![
                ("seconds", PValue::I64(-1)),
                ("nanos", PValue::I32(-500_000_000)),
            ],
        );
        let maybe = msg_with(
            s,
            "google.protobuf.Int64Value",
            vec![("value", PValue::I64(0))],
        );
        let num = msg_with(
            s,
            "google.protobuf.Value",
            vec![("number_value", PValue::F64(1.5))],
        );
        let text = msg_with(
            s,
            "google.protobuf.Value",
            vec![("string_value", PValue::String("x".into()))],
        );
        let extra = msg_with(
            s,
            "google.protobuf.Struct",
            vec![(
                "fields",
                PValue::Map(HashMap::from([
                    (MapKey::String("n".into()), PValue::Message(num)),
                    (MapKey::String("s".into()), PValue::Message(text)),
                ])),
            )],
        );
        vec![
            ("ts", PValue::Message(ts)),
            ("took", PValue::Message(took)),
            ("maybe", PValue::Message(maybe)),
            ("extra", PValue::Message(extra)),
        ]
    }

    /// `tags` … `lines`: repeated, map, nested messages, a oneof member.
    fn nested_fields(s: &Schema) -> Vec<(&'static str, PValue)> {
        let cust = msg_with(s, "shop.Order.Customer", vec![("cid", PValue::I64(42))]);
        let line = msg_with(
            s,
            "shop.Order.Line",
            vec![("sku", PValue::String("A-1".into()))],
        );
        vec![
            (
                "tags",
                PValue::List(vec![PValue::String("a".into()), PValue::String("b".into())]),
            ),
            (
                "attrs",
                PValue::Map(HashMap::from([(
                    MapKey::String("k".into()),
                    PValue::I64(7),
                )])),
            ),
            ("customer", PValue::Message(cust)),
            ("iban", PValue::String("NO93".into())),
            ("lines", PValue::List(vec![PValue::Message(line)])),
        ]
    }

    #[test]
    fn every_type_maps_as_documented() {
        let s = order_schema(1);
        let mut fields = scalar_fields();
        fields.extend(well_known_fields(&s));
        fields.extend(nested_fields(&s));
        let got = roundtrip(&s, &msg_with(&s, "shop.Order", fields));
        let want = json!({
            "id": 9_007_199_254_740_993u64, "big": u64::MAX, "qty": -3, "delta": -5,
            "f": 0.1, "d": "Infinity", "ok": true, "name": "Zoë", "raw": "\\x00ab",
            "status": "PAID", "note": "",
            "ts": "2024-05-06T07:08:09.123Z", "took": "PT-1.500S", "maybe": 0,
            "extra": {"n": 1.5, "s": "x"},
            "tags": ["a", "b"], "attrs": {"k": 7},
            "customer": {"cid": 42, "address": null},
            "price": null, "card": null, "iban": "NO93",
            "lines": [{"sku": "A-1"}]
        });
        assert_eq!(got, want);
        assert_eq!(got["big"].to_string(), "18446744073709551615");
    }

    #[test]
    fn unset_fields_follow_presence() {
        let s = order_schema(2);
        let got = roundtrip(&s, &msg(&s, "shop.Order"));
        // Implicit-presence scalars → defaults; presence-tracking fields → null.
        assert_eq!(got["id"], json!(0));
        assert_eq!(got["name"], json!(""));
        assert_eq!(got["status"], json!("NEW"));
        assert_eq!(got["raw"], json!("\\x"));
        assert_eq!(got["note"], Value::Null);
        assert_eq!(got["ts"], Value::Null);
        assert_eq!(got["maybe"], Value::Null);
        assert_eq!(got["customer"], Value::Null);
        assert_eq!(got["tags"], json!([]));
        assert_eq!(got["attrs"], json!({}));
    }

    #[test]
    fn message_index_selects_nested_and_later_types() {
        let s = order_schema(3);
        let p = s.as_protobuf().unwrap();
        assert_eq!(p.message_indexes("shop.Order"), Some(vec![0]));
        assert_eq!(p.message_indexes("shop.Other"), Some(vec![1]));
        // Order's nested types: AttrsEntry (map entry) counts, so Customer is 1.
        assert_eq!(p.message_indexes("shop.Order.Customer"), Some(vec![0, 1]));
        let o = msg_with(&s, "shop.Other", vec![("x", PValue::String("y".into()))]);
        assert_eq!(roundtrip(&s, &o), json!({"x": "y"}));
        let a = msg_with(
            &s,
            "shop.Order.Address",
            vec![("city", PValue::String("Oslo".into()))],
        );
        assert_eq!(roundtrip(&s, &a), json!({"city": "Oslo"}));
        // A path that names nothing is poison.
        let bad = wire::encode_protobuf(3, &[7], &[]);
        let e = decode(Format::Protobuf, &bad, &s).unwrap_err();
        assert_eq!(e.reason(), "undecodable");
        assert!(e.to_string().contains("[7]"), "{e}");
    }

    #[test]
    fn poison_bodies() {
        let s = order_schema(4);
        // Field 1 (id, varint) with a truncated varint.
        let e = decode(
            Format::Protobuf,
            &wire::encode_protobuf(4, &[0], &[0x08, 0x80]),
            &s,
        )
        .unwrap_err();
        assert_eq!((e.reason(), e.schema_id()), ("undecodable", Some(4)));
        // Wrong wire type for field 8 (string sent as varint).
        assert!(decode(
            Format::Protobuf,
            &wire::encode_protobuf(4, &[0], &[0x40, 0x01]),
            &s
        )
        .is_err());
        // Message-index list truncated.
        assert!(decode(Format::Protobuf, &wire::encode(4, &[0x80]), &s).is_err());
        // Unknown fields are dropped, not an error.
        let v = decode(
            Format::Protobuf,
            &wire::encode_protobuf(4, &[1], &[0xf8, 0x06, 0x01]),
            &s,
        )
        .unwrap();
        assert_eq!(v, json!({"x": ""}));
    }

    /// Schema text and message exactly as Python confluent-kafka 2.16
    /// (ProtobufSerializer) registered / wrote them against Apicurio.
    #[test]
    fn base64_file_descriptor_from_python() {
        let text = "ChdweTEyNjQtMTc5NTc3MTU2MS5wcm90bxIGcHlzaG9wIiwKBEl0ZW0SCgoCaWQYASABKAMSCwoDc2t1GAIgASgJEgsKA3F0eRgDIAEoDWIGcHJvdG8z";
        let s = Schema::parse(6, SchemaType::Protobuf, text, &[]).unwrap();
        let msg = hex::decode("00000000060008f9ffffffffffffffff011203412d31").unwrap();
        let v = decode(Format::Protobuf, &msg, &s).unwrap();
        assert_eq!(v, json!({"id": -7, "sku": "A-1", "qty": 0}));
    }

    /// A message declaration cut off after its opening brace.
    const UNCLOSED: &str = "syntax = \"proto3\"; message {";

    #[test]
    fn bad_schemas_are_schema_errors() {
        assert!(Schema::parse(5, SchemaType::Protobuf, UNCLOSED, &[]).is_err());
        // Missing reference.
        let e = Schema::parse(6, SchemaType::Protobuf, ORDER, &[]).unwrap_err();
        assert!(e.to_string().contains("money.proto"), "{e}");
        assert!(Schema::parse(7, SchemaType::Protobuf, "syntax = \"proto3\";", &[]).is_err());
    }

    #[test]
    fn same_record_under_two_ids_hashes_alike() {
        // v2 adds an optional field: v1 and v2 encodings of an event that leaves it unset agree.
        let v1 = "syntax = \"proto3\"; message E { int64 id = 1; string name = 2; }";
        let v2 = "syntax = \"proto3\"; message E { int64 id = 1; string name = 2; optional string note = 3; }";
        let s1 = Schema::parse(10, SchemaType::Protobuf, v1, &[]).unwrap();
        let s2 = Schema::parse(11, SchemaType::Protobuf, v2, &[]).unwrap();
        let event = |s| {
            msg_with(
                s,
                "E",
                vec![("id", PValue::I64(1)), ("name", PValue::String("a".into()))],
            )
        };
        let a = roundtrip(&s1, &event(&s1));
        let b = roundtrip(&s2, &event(&s2));
        assert_eq!(b, json!({"id": 1, "name": "a", "note": null}));
        assert_eq!(hash_view(&a), hash_view(&b));
    }

    #[test]
    fn columns_follow_the_schema() {
        let s = order_schema(8);
        let cols = columns_from_protobuf(&s.as_protobuf().unwrap().message(&[0]).unwrap());
        assert_eq!(
            column_rows(&cols),
            [
                ("id", "bigint", "/id", false),
                ("big", "numeric(20,0)", "/big", false),
                ("qty", "integer", "/qty", false),
                ("delta", "bigint", "/delta", false),
                ("f", "real", "/f", false),
                ("d", "double precision", "/d", false),
                ("ok", "boolean", "/ok", false),
                ("name", "text", "/name", false),
                ("raw", "bytea", "/raw", false),
                ("status", "text", "/status", false),
                ("note", "text", "/note", true),
                ("ts", "timestamp with time zone", "/ts", true),
                ("took", "interval", "/took", true),
                ("maybe", "bigint", "/maybe", true),
                ("extra", "jsonb", "/extra", true),
                ("tags", "text[]", "/tags", false),
                ("attrs", "jsonb", "/attrs", false),
                ("customer_cid", "bigint", "/customer/cid", true),
                (
                    "customer_address_city",
                    "text",
                    "/customer/address/city",
                    true
                ),
                ("price_currency", "text", "/price/currency", true),
                ("price_units", "bigint", "/price/units", true),
                ("card", "text", "/card", true),
                ("iban", "text", "/iban", true),
                ("lines", "jsonb", "/lines", false),
            ]
        );
    }
}
