//! Change events as Confluent's ProtobufConverter would write them: a
//! JsonConverter record (Connect schema + payload, as Debezium recorded
//! them) turned into the `.proto` its `ProtobufData.fromConnectSchema`
//! registers and the message its `fromConnectData` encodes, with
//! `optional.for.nullables=true`. Written from that code's rules, not from
//! the sink's reader, so the two are checked against each other:
//! * a struct named `a.b.C` → message `C` (in package `a.b` at the root,
//!   nested in its parent otherwise); fields numbered 1, 2, … in order;
//! * optional fields → proto3 `optional`; arrays → `repeated` (an empty
//!   array is not written; a NULL element cannot be: the converter fails);
//! * `Decimal` → `confluent.type.Decimal` with `precision`/`scale` in
//!   `(confluent.field_meta).params`; `int8`/`int16` → `int32` with
//!   `connect.type`; Connect `Date`/`Time`/`Timestamp` → `google.type.Date`,
//!   `google.type.TimeOfDay`, `google.protobuf.Timestamp`;
//! * every other schema name, parameter and default is dropped.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use base64::Engine as _;
use chrono::{DateTime, Datelike, Timelike};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value as P};
use serde_json::Value;

use kafka_pg_sink::format::protobuf::ProtoSchema;

const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
const DATE: &str = "org.apache.kafka.connect.data.Date";
const TIME: &str = "org.apache.kafka.connect.data.Time";
const TIMESTAMP: &str = "org.apache.kafka.connect.data.Timestamp";

/// The `.proto` text for a Connect struct schema (JsonConverter's JSON).
pub fn proto_of(schema: &Value) -> String {
    let full = schema["name"].as_str().expect("a named root struct");
    let (package, name) = full.rsplit_once('.').unwrap_or(("", full));
    let mut imports = BTreeSet::new();
    let mut body = String::new();
    message(&mut body, &mut imports, name, schema, 0);
    let mut out = String::from("syntax = \"proto3\";\n");
    if !package.is_empty() {
        writeln!(out, "package {package};").unwrap();
    }
    for i in imports {
        writeln!(out, "import \"{i}\";").unwrap();
    }
    out + "\n" + &body
}

fn last_name(full: &str) -> &str {
    full.rsplit('.').next().unwrap()
}

fn message(
    out: &mut String,
    imports: &mut BTreeSet<&'static str>,
    name: &str,
    s: &Value,
    depth: usize,
) {
    let pad = "  ".repeat(depth);
    writeln!(out, "{pad}message {name} {{").unwrap();
    let mut nested: Vec<(String, &Value)> = Vec::new();
    for (i, f) in s["fields"].as_array().unwrap().iter().enumerate() {
        let field = f["field"].as_str().unwrap();
        let (label, item) = match f["type"].as_str().unwrap() {
            "array" => ("repeated ", &f["items"]),
            "map" => ("", f),
            _ if f["optional"] == true => ("optional ", f),
            _ => ("", f),
        };
        let (ty, params) = if f["type"] == "map" {
            // A map of scalars, printed as `map<K, V>` (its entry message).
            let (k, _) = type_of(imports, &f["keys"], field);
            let (v, _) = type_of(imports, &f["values"], field);
            (format!("map<{k}, {v}>"), Vec::new())
        } else {
            type_of(imports, item, field)
        };
        if item["type"] == "struct" && !nested.iter().any(|(n, _)| *n == ty) {
            nested.push((ty.clone(), item));
        }
        write!(out, "{pad}  {label}{ty} {field} = {}", i + 1).unwrap();
        if !params.is_empty() {
            imports.insert("confluent/meta.proto");
            let entries: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{{ key: \"{k}\", value: \"{v}\" }}"))
                .collect();
            write!(
                out,
                " [(confluent.field_meta) = {{ params: [{}] }}]",
                entries.join(", ")
            )
            .unwrap();
        }
        out.push_str(";\n");
    }
    for (ty, s) in nested {
        message(out, imports, &ty, s, depth + 1);
    }
    writeln!(out, "{pad}}}").unwrap();
}

/// A field's Protobuf type and its `field_meta` params.
fn type_of(
    imports: &mut BTreeSet<&'static str>,
    s: &Value,
    field: &str,
) -> (String, Vec<(String, String)>) {
    let mut params = Vec::new();
    let named = |imports: &mut BTreeSet<&'static str>, file, ty: &str| {
        imports.insert(file);
        (ty.to_string(), Vec::new())
    };
    match s["name"].as_str() {
        Some(DECIMAL) => {
            imports.insert("confluent/type/decimal.proto");
            let p = &s["parameters"];
            if let Some(v) = p["connect.decimal.precision"].as_str() {
                params.push(("precision".into(), v.to_string()));
            }
            if let Some(v) = p["scale"].as_str() {
                params.push(("scale".into(), v.to_string()));
            }
            return ("confluent.type.Decimal".into(), params);
        }
        Some(DATE) => return named(imports, "google/type/date.proto", "google.type.Date"),
        Some(TIME) => {
            return named(
                imports,
                "google/type/timeofday.proto",
                "google.type.TimeOfDay",
            )
        }
        Some(TIMESTAMP) => {
            return named(
                imports,
                "google/protobuf/timestamp.proto",
                "google.protobuf.Timestamp",
            )
        }
        _ => {}
    }
    let ty = match s["type"].as_str().unwrap() {
        t @ ("int8" | "int16") => {
            params.push(("connect.type".into(), t.to_string()));
            "int32".to_string()
        }
        "int32" => "int32".into(),
        "int64" => "int64".into(),
        "float" | "float32" => "float".into(),
        "double" | "float64" => "double".into(),
        "boolean" => "bool".into(),
        "string" => "string".into(),
        "bytes" => "bytes".into(),
        "struct" => {
            let name = last_name(s["name"].as_str().expect("a named struct")).to_string();
            if name == field {
                name + "Message"
            } else {
                name
            }
        }
        other => panic!("{field}: Connect type {other} is not transcoded here"),
    };
    (ty, params)
}

/// The message for a JsonConverter payload, or why the converter could
/// not write it.
pub fn message_of(
    desc: &MessageDescriptor,
    schema: &Value,
    payload: &Value,
) -> Result<DynamicMessage, String> {
    let mut m = DynamicMessage::new(desc.clone());
    for f in schema["fields"].as_array().unwrap() {
        let name = f["field"].as_str().unwrap();
        let v = &payload[name];
        let fd = desc.get_field_by_name(name).unwrap();
        if v.is_null() {
            continue;
        }
        let value = if f["type"] == "map" {
            let (prost_reflect::Kind::Message(entry), Value::Object(o)) = (fd.kind(), v) else {
                panic!("{name}: a map")
            };
            let (kf, vf) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let mut out = std::collections::HashMap::new();
            for (k, x) in o {
                let key = match value_of(&kf, &f["keys"], &Value::String(k.clone()))? {
                    P::String(s) => prost_reflect::MapKey::String(s),
                    other => panic!("{name}: map key {other:?}"),
                };
                if x.is_null() {
                    return Err(format!("{name}: a NULL map value"));
                }
                out.insert(key, value_of(&vf, &f["values"], x)?);
            }
            P::Map(out)
        } else if f["type"] == "array" {
            let items = v.as_array().unwrap();
            if items.is_empty() {
                continue;
            }
            let mut out = Vec::new();
            for x in items {
                if x.is_null() {
                    return Err(format!("{name}: a NULL array element"));
                }
                out.push(value_of(&fd, &f["items"], x)?);
            }
            P::List(out)
        } else {
            value_of(&fd, f, v)?
        };
        m.set_field(&fd, value);
    }
    Ok(m)
}

fn value_of(fd: &prost_reflect::FieldDescriptor, s: &Value, v: &Value) -> Result<P, String> {
    let sub = |name: &str, fields: Vec<(&str, P)>| {
        let desc = fd.parent_pool().get_message_by_name(name).unwrap();
        let mut m = DynamicMessage::new(desc);
        for (k, x) in fields {
            m.set_field_by_name(k, x);
        }
        P::Message(m)
    };
    let int = || v.as_i64().ok_or_else(|| format!("{v} is not an integer"));
    Ok(match s["name"].as_str() {
        Some(DECIMAL) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            let scale: i32 = s["parameters"]["scale"].as_str().unwrap().parse().unwrap();
            let unscaled = num_bigint::BigInt::from_signed_bytes_be(&bytes);
            let precision = unscaled.magnitude().to_string().len() as u32;
            sub(
                "confluent.type.Decimal",
                vec![
                    ("value", P::Bytes(bytes.into())),
                    ("precision", P::U32(precision)),
                    ("scale", P::I32(scale)),
                ],
            )
        }
        Some(DATE) => {
            let d = DateTime::from_timestamp(int()? * 86_400, 0).ok_or("date out of range")?;
            sub(
                "google.type.Date",
                vec![
                    ("year", P::I32(d.year())),
                    ("month", P::I32(d.month() as i32)),
                    ("day", P::I32(d.day() as i32)),
                ],
            )
        }
        Some(TIME) => {
            let t = DateTime::from_timestamp_millis(int()?).ok_or("time out of range")?;
            sub(
                "google.type.TimeOfDay",
                vec![
                    ("hours", P::I32(t.hour() as i32)),
                    ("minutes", P::I32(t.minute() as i32)),
                    ("seconds", P::I32(t.second() as i32)),
                    ("nanos", P::I32(t.nanosecond() as i32)),
                ],
            )
        }
        Some(TIMESTAMP) => {
            let ms = int()?;
            // protobuf-java's Timestamps.fromMillis refuses what lies
            // outside years 1 to 9999 (PgJDBC's infinity sentinels).
            if !(-62_135_596_800_000..=253_402_300_799_999).contains(&ms) {
                return Err(format!(
                    "timestamp {ms} ms is outside google.protobuf.Timestamp"
                ));
            }
            sub(
                "google.protobuf.Timestamp",
                vec![
                    ("seconds", P::I64(ms.div_euclid(1_000))),
                    ("nanos", P::I32((ms.rem_euclid(1_000) * 1_000_000) as i32)),
                ],
            )
        }
        _ => match s["type"].as_str().unwrap() {
            "int8" | "int16" | "int32" => P::I32(int()? as i32),
            "int64" => P::I64(int()?),
            "float" | "float32" => P::F32(float(v) as f32),
            "double" | "float64" => P::F64(float(v)),
            "boolean" => P::Bool(v.as_bool().unwrap()),
            "string" => P::String(v.as_str().unwrap().to_string()),
            "bytes" => P::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap()
                    .into(),
            ),
            "struct" => {
                let prost_reflect::Kind::Message(desc) = fd.kind() else {
                    panic!("{}: a struct in a non-message field", fd.name())
                };
                P::Message(message_of(&desc, s, v)?)
            }
            other => panic!("Connect type {other} is not transcoded here"),
        },
    })
}

/// JsonConverter writes NaN and the infinities as strings.
fn float(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        other => other.as_f64().unwrap(),
    }
}

/// A compiled transcoded schema and the root message's encoder.
pub struct Transcoded {
    pub text: String,
    schema: ProtoSchema,
}

impl Transcoded {
    pub fn new(connect_schema: &Value) -> Transcoded {
        let text = proto_of(connect_schema);
        let schema = ProtoSchema::compile(0, &text, &[]).unwrap_or_else(|e| panic!("{e}\n{text}"));
        Transcoded { text, schema }
    }

    /// The message body (no framing) for a payload.
    pub fn encode(&self, connect_schema: &Value, payload: &Value) -> Result<Vec<u8>, String> {
        let root = self.schema.message(&[0]).unwrap();
        Ok(message_of(&root, connect_schema, payload)?.encode_to_vec())
    }
}
