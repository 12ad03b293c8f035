//! Schema'd payloads: Avro, Protobuf and JSON Schema in the
//! Confluent wire format, decoded into the JSON value the rest of the sink
//! already works with (JSON pointers, `columns`, `hash_exclude`, the event
//! hash). Everything here is pure and synchronous: no I/O, no clock.
//!
//! The flow the pipeline is meant to follow:
//!
//! 1. [`schema_id`] peeks at the 5-byte header (cheap) so unknown ids can be
//!    fetched from the registry asynchronously *before* batch preparation
//!    (the registry client's `schema`, which caches by id);
//! 2. [`decode`] then turns `(format, bytes, &Schema)` into a
//!    `serde_json::Value` synchronously; a [`DecodeError`] is a poison message
//!    (dead letter) naming the reason and the schema id.
//!
//! A message is always decoded with its **writer** schema (the id in its
//! header), never with a reader schema: decoding needs nothing but the id.
//!
//! # Hash rule across schema ids (proposal for the pipeline)
//!
//! The event hash covers the decoded value, never the bytes or the schema id.
//! So the same record re-sent under another id decodes to the same value and
//! is a duplicate whenever the two writer schemas agree on it: the same text
//! registered under another subject (a new id on some registries), or texts
//! that differ only in doc strings, aliases, defaults or field order (objects
//! are hashed canonically, so field order never matters).
//!
//! A compatible *evolution* is different: v2 adds `{"name":"note","type":
//! ["null","string"],"default":null}`; the same logical event written under
//! v1 decodes to `{"id":1}` and under v2 to `{"id":1,"note":null}`. Plain JSON
//! routes rightly treat `{}` and `{"a":null}` as different documents, but for
//! schema'd routes absent and null mean the same thing (every column reads
//! NULL). Proposed rule: **for schema'd formats, hash
//! [`hash_view`]`(value)`: the decoded value with null-valued object members
//! removed, recursively.** Then v1 and v2 encodings of an event that leaves
//! the new field null are duplicates, and an event that sets it is not.
//! Protobuf note: proto3 scalars without `optional` have no presence and decode
//! to their default (`0`, `""`), not null; a field added that way changes the
//! hash of v2 events (declare it `optional`, or list it in `hash_exclude`).
//!
//! Mapping rules per format: [`avro`], [`protobuf`], [`json_schema`]. Typed
//! tables from a schema: [`columns`] ([`avro::columns_from_avro`],
//! [`protobuf::columns_from_protobuf`]).

pub mod avro;
pub mod connect;
pub mod json_schema;
pub mod protobuf;
pub mod registry;
pub mod wire;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use wire::schema_id;

/// How a route's message values (or keys) are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Schema-less JSON text (no wire-format header): the sink's original input.
    #[default]
    Json,
    Avro,
    Protobuf,
    JsonSchema,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::Protobuf => "protobuf",
            Format::JsonSchema => "json_schema",
        }
    }

    /// The registry schema type this format reads; `None` for plain JSON.
    pub fn schema_type(self) -> Option<SchemaType> {
        match self {
            Format::Json => None,
            Format::Avro => Some(SchemaType::Avro),
            Format::Protobuf => Some(SchemaType::Protobuf),
            Format::JsonSchema => Some(SchemaType::Json),
        }
    }

    /// True for the formats framed in the Confluent wire format.
    pub fn is_schemad(self) -> bool {
        self != Format::Json
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registry's `schemaType` (absent in a registry answer means Avro).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    Avro,
    Protobuf,
    Json,
}

impl SchemaType {
    /// The name used by the Confluent API (`AVRO`, `PROTOBUF`, `JSON`).
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Protobuf => "PROTOBUF",
            SchemaType::Json => "JSON",
        }
    }

    /// Parses the Confluent API's `schemaType` (case-insensitive; missing = AVRO).
    pub fn from_registry(s: Option<&str>) -> Option<Self> {
        match s.map(str::to_ascii_uppercase).as_deref() {
            None | Some("AVRO") | Some("") => Some(SchemaType::Avro),
            Some("PROTOBUF") => Some(SchemaType::Protobuf),
            Some("JSON") => Some(SchemaType::Json),
            Some(_) => None,
        }
    }
}

impl fmt::Display for SchemaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A referenced schema, already fetched: `name` is what the referring schema
/// uses (the import path for Protobuf, the full name for Avro), `text` the
/// referenced schema's text. The list given to [`Schema::parse`] is the
/// transitive closure (references of references included), any order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub text: String,
}

/// A parsed, ready-to-decode writer schema (what the registry returns by id).
#[derive(Debug)]
pub struct Schema {
    id: u32,
    text: String,
    parsed: Parsed,
    /// The Connect schema an Avro schema written by Connect describes
    /// (change events: tables are created from it), read on first use.
    connect: std::sync::OnceLock<Result<std::sync::Arc<connect::Known>, String>>,
}

#[derive(Debug)]
enum Parsed {
    Avro(avro::AvroSchema),
    Protobuf(protobuf::ProtoSchema),
    Json(json_schema::JsonSchema),
}

impl Schema {
    /// Parses (Avro), compiles (Protobuf) or reads (JSON Schema) a schema text.
    /// A failure is permanent for that id: messages written with it are poison.
    pub fn parse(
        id: u32,
        schema_type: SchemaType,
        text: &str,
        references: &[Reference],
    ) -> Result<Schema, SchemaError> {
        let err = |reason: String| SchemaError {
            id,
            schema_type,
            reason,
        };
        let parsed = match schema_type {
            SchemaType::Avro => {
                Parsed::Avro(avro::AvroSchema::parse(text, references).map_err(err)?)
            }
            SchemaType::Protobuf => {
                Parsed::Protobuf(protobuf::ProtoSchema::compile(id, text, references).map_err(err)?)
            }
            SchemaType::Json => Parsed::Json(json_schema::JsonSchema::parse(text).map_err(err)?),
        };
        Ok(Schema {
            id,
            text: text.to_string(),
            parsed,
            connect: std::sync::OnceLock::new(),
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The Connect schema of an Avro or Protobuf schema written by
    /// Connect's converter (change events: tables are created from it).
    pub fn connect(&self) -> Result<std::sync::Arc<connect::Known>, String> {
        self.connect
            .get_or_init(|| {
                let s = match &self.parsed {
                    Parsed::Avro(_) => serde_json::from_str(&self.text)
                        .map_err(|e| e.to_string())
                        .and_then(|v| connect::ConnectSchema::from_avro_json(&v)),
                    Parsed::Protobuf(p) => {
                        p.connect_root().and_then(|m| connect::from_protobuf(&m))
                    }
                    Parsed::Json(_) => Err(
                        "tables are created from Avro, Protobuf or JSON-with-schema change events"
                            .into(),
                    ),
                };
                s.map(|s| std::sync::Arc::new(connect::Known::new(&self.text, s)))
                    .map_err(|e| format!("schema {}: {e}", self.id))
            })
            .clone()
    }

    pub fn schema_type(&self) -> SchemaType {
        match self.parsed {
            Parsed::Avro(_) => SchemaType::Avro,
            Parsed::Protobuf(_) => SchemaType::Protobuf,
            Parsed::Json(_) => SchemaType::Json,
        }
    }

    /// The schema text as the registry returned it.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn as_avro(&self) -> Option<&avro::AvroSchema> {
        match &self.parsed {
            Parsed::Avro(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_protobuf(&self) -> Option<&protobuf::ProtoSchema> {
        match &self.parsed {
            Parsed::Protobuf(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_json_schema(&self) -> Option<&json_schema::JsonSchema> {
        match &self.parsed {
            Parsed::Json(s) => Some(s),
            _ => None,
        }
    }
}

/// A schema text that cannot be used (does not parse / compile, a reference
/// is missing). Permanent for that id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("schema {id} ({schema_type}) is not usable: {reason}")]
pub struct SchemaError {
    pub id: u32,
    pub schema_type: SchemaType,
    pub reason: String,
}

/// Why a message did not decode: always a poison message (dead letter).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not in the Confluent wire format (empty, first byte not 0, too short).
    #[error("not in the Confluent wire format: {reason}")]
    NoMagicByte { reason: String },
    /// The id names a schema of another type than the route's format.
    #[error("schema {schema_id} is a {actual} schema, the route reads {expected}")]
    WrongSchemaType {
        schema_id: u32,
        expected: Format,
        actual: SchemaType,
    },
    /// The message's id differs from the id of the schema passed in (caller bug
    /// or a stale lookup).
    #[error("message has schema id {message_id}, decoder was given schema {schema_id}")]
    SchemaIdMismatch { message_id: u32, schema_id: u32 },
    /// Header fine, body does not decode with the writer schema.
    #[error("schema {schema_id}: body does not decode as {format}: {reason}")]
    Body {
        schema_id: u32,
        format: Format,
        reason: String,
    },
    /// `decode` was called for `Format::Json`, which has no wire format.
    #[error("format json is not schema'd: parse it as plain JSON")]
    NotSchemad,
}

impl DecodeError {
    /// The schema id named in the message, when the header was readable.
    pub fn schema_id(&self) -> Option<u32> {
        match self {
            DecodeError::WrongSchemaType { schema_id, .. }
            | DecodeError::Body { schema_id, .. } => Some(*schema_id),
            DecodeError::SchemaIdMismatch { message_id, .. } => Some(*message_id),
            DecodeError::NoMagicByte { .. } | DecodeError::NotSchemad => None,
        }
    }

    /// Short reason code for dead letters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NoMagicByte { .. } => "no_magic_byte",
            DecodeError::WrongSchemaType { .. } => "wrong_schema_type",
            DecodeError::SchemaIdMismatch { .. } => "schema_id_mismatch",
            DecodeError::Body { .. } => "undecodable",
            DecodeError::NotSchemad => "not_schemad",
        }
    }
}

/// Decodes a Confluent-framed message with its writer schema into the JSON
/// value the sink works with. `schema` must be the schema named by the
/// message's id ([`schema_id`]).
pub fn decode(format: Format, bytes: &[u8], schema: &Schema) -> Result<Value, DecodeError> {
    let expected = format.schema_type().ok_or(DecodeError::NotSchemad)?;
    let (id, rest) = wire::split(bytes)?;
    if id != schema.id {
        return Err(DecodeError::SchemaIdMismatch {
            message_id: id,
            schema_id: schema.id,
        });
    }
    let body_err = |reason: String| DecodeError::Body {
        schema_id: id,
        format,
        reason,
    };
    match (&schema.parsed, expected) {
        (Parsed::Avro(s), SchemaType::Avro) => s.decode(rest).map_err(body_err),
        (Parsed::Protobuf(s), SchemaType::Protobuf) => {
            let (indexes, body) = wire::split_message_indexes(rest).map_err(body_err)?;
            s.decode(&indexes, body).map_err(body_err)
        }
        (Parsed::Json(s), SchemaType::Json) => s.decode(rest).map_err(body_err),
        _ => Err(DecodeError::WrongSchemaType {
            schema_id: id,
            expected: format,
            actual: schema.schema_type(),
        }),
    }
}

/// The value to hash for a schema'd message: `value` with every null-valued
/// object member removed, recursively (array elements are kept, `[null]`
/// stays). See the module doc for why.
pub fn hash_view(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), hash_view(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(hash_view).collect()),
        other => other.clone(),
    }
}

/// One column of a typed table derived from a schema.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ColumnSpec {
    /// Column name, case kept as in the schema (quote it in SQL), at most 63
    /// bytes (see [`avro`] for flattening and collisions).
    pub name: String,
    /// Postgres type as SQL text: `bigint`, `numeric(10,2)`, `text[]`, …
    pub pg_type: String,
    /// JSON pointer into the decoded value (`/customer/address/city`).
    pub pointer: String,
    /// False only when every message of this schema has a non-null value there.
    pub nullable: bool,
}

/// Columns for a typed table following the schema. Protobuf uses the first
/// top-level message (index `[0]`, the common case); JSON Schema is read from
/// its `properties` (see [`json_schema`]).
pub fn columns(schema: &Schema) -> Vec<ColumnSpec> {
    match &schema.parsed {
        Parsed::Avro(s) => avro::columns_from_avro(s),
        Parsed::Protobuf(s) => s
            .message(&[0])
            .map(|m| protobuf::columns_from_protobuf(&m))
            .unwrap_or_default(),
        Parsed::Json(s) => json_schema::columns_from_json_schema(s),
    }
}

/// Postgres truncates identifiers to 63 bytes (NAMEDATALEN - 1). A longer
/// flattened name keeps its first 54 bytes (on a char boundary) plus `_` and 8
/// hex digits of the SHA-256 of the full name, so two long names that share a
/// prefix stay distinct and the result is stable across runs.
pub(crate) fn pg_identifier(name: &str) -> String {
    use sha2::{Digest, Sha256};
    if name.len() <= 63 {
        return name.to_string();
    }
    let mut cut = 54;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Sha256::digest(name.as_bytes());
    format!("{}_{}", &name[..cut], hex::encode(&digest[..4]))
}

/// The single column of a schema whose root is not a record (or has no
/// properties): the whole decoded value, pointer `""`.
pub(crate) fn whole_value_column(pg_type: String) -> ColumnSpec {
    ColumnSpec {
        name: "value".into(),
        pg_type,
        pointer: String::new(),
        nullable: true,
    }
}

/// `["null", T]` in any order means `T`, nullable: the only non-null member
/// (`None` when there are several, or none) and whether null was among them.
/// Shared by Avro unions and JSON Schema `type` arrays.
pub(crate) fn only_non_null<T>(
    members: impl IntoIterator<Item = T>,
    is_null: impl Fn(&T) -> bool,
) -> (Option<T>, bool) {
    let (nulls, mut non_null): (Vec<T>, Vec<T>) = members.into_iter().partition(|m| is_null(m));
    let only = if non_null.len() == 1 {
        non_null.pop()
    } else {
        None
    };
    (only, !nulls.is_empty())
}

/// Where the members of a (possibly nested) record land when it is flattened
/// into `parent_child` columns: the name prefix, the JSON pointer, whether
/// the record itself may be null (then every member column is nullable), and
/// its depth (on a name collision the shallowest claimant keeps the name).
#[derive(Clone, Debug, Default)]
pub(crate) struct Parent {
    name_prefix: String,
    pointer: String,
    pub nullable: bool,
    pub depth: usize,
}

/// One member of a [`Parent`]: its full column name (before the 63-byte
/// cut) and its JSON pointer.
pub(crate) struct Member {
    pub name: String,
    pub pointer: String,
}

impl Parent {
    pub(crate) fn member(&self, key: &str) -> Member {
        Member {
            name: format!("{}{key}", self.name_prefix),
            pointer: format!("{}/{}", self.pointer, pointer_token(key)),
        }
    }

    /// The parent of the members of `member`, itself a record to flatten.
    pub(crate) fn nested(&self, member: &Member, nullable: bool) -> Parent {
        Parent {
            name_prefix: format!("{}_", member.name),
            pointer: member.pointer.clone(),
            nullable,
            depth: self.depth + 1,
        }
    }
}

/// Columns found while flattening, each with the depth it was found at.
#[derive(Default)]
pub(crate) struct Flattened(Vec<(usize, ColumnSpec)>);

impl Flattened {
    pub(crate) fn push(
        &mut self,
        parent: &Parent,
        member: Member,
        pg_type: String,
        nullable: bool,
    ) {
        self.0.push((
            parent.depth,
            ColumnSpec {
                name: pg_identifier(&member.name),
                pg_type,
                pointer: member.pointer,
                nullable,
            },
        ));
    }

    /// Settles name collisions (shallowest first, then declaration order,
    /// keeps the plain name) and returns the columns in declaration order,
    /// the table layout.
    pub(crate) fn into_columns(self) -> Vec<ColumnSpec> {
        let cols = self.0;
        let mut order: Vec<usize> = (0..cols.len()).collect();
        order.sort_by_key(|&i| (cols[i].0, i));
        let mut ranked: Vec<ColumnSpec> = order.iter().map(|&i| cols[i].1.clone()).collect();
        dedupe_names(&mut ranked);
        let mut out: Vec<(usize, ColumnSpec)> = order.into_iter().zip(ranked).collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, c)| c).collect()
    }
}

/// Gives later duplicates `_2`, `_3`, … (the first claimant keeps the plain
/// name). Input order decides who is first.
fn dedupe_names(cols: &mut [ColumnSpec]) {
    let mut seen = std::collections::HashSet::new();
    for c in cols.iter_mut() {
        if seen.insert(c.name.clone()) {
            continue;
        }
        let mut n = 2;
        loop {
            let candidate = pg_identifier(&format!("{}_{n}", c.name));
            if seen.insert(candidate.clone()) {
                c.name = candidate;
                break;
            }
            n += 1;
        }
    }
}

/// JSON pointer token escaping (RFC 6901).
pub(crate) fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// `\x` + lowercase hex: Postgres' bytea input form (also used for binary keys).
pub(crate) fn bytea_hex(b: &[u8]) -> Value {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("\\x");
    s.push_str(&hex::encode(b));
    Value::String(s)
}

/// Floats: finite values as the shortest decimal that reads back to the same
/// f32/f64 (ECMAScript style, `1e+21`; `-0.0` keeps its sign), NaN and ±Inf
/// as the strings Postgres' float input accepts.
pub(crate) fn float_json<F: ryu_js::Float + Copy + Into<f64>>(f: F) -> Value {
    let d: f64 = f.into();
    if d.is_nan() {
        return Value::String("NaN".into());
    }
    if d.is_infinite() {
        return Value::String(if d > 0.0 { "Infinity" } else { "-Infinity" }.into());
    }
    // ECMAScript prints -0 as `0`; Postgres keeps the sign.
    if d == 0.0 && d.is_sign_negative() {
        return number("-0.0");
    }
    let mut buf = ryu_js::Buffer::new();
    number(buf.format_finite(f))
}

/// A JSON number from its exact text (arbitrary_precision keeps the digits).
pub(crate) fn number(text: &str) -> Value {
    match text.parse::<serde_json::Number>() {
        Ok(n) => Value::Number(n),
        // Only reachable with a formatting bug; keep the text rather than panic.
        Err(_) => Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns as (name, type, pointer, nullable) rows, to compare with a
    /// table in the tests of each format.
    pub(super) fn column_rows(cols: &[ColumnSpec]) -> Vec<(&str, &str, &str, bool)> {
        cols.iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.pg_type.as_str(),
                    c.pointer.as_str(),
                    c.nullable,
                )
            })
            .collect()
    }

    #[test]
    fn format_serde_names() {
        for (f, s) in [
            (Format::Json, "\"json\""),
            (Format::Avro, "\"avro\""),
            (Format::Protobuf, "\"protobuf\""),
            (Format::JsonSchema, "\"json_schema\""),
        ] {
            assert_eq!(serde_json::to_string(&f).unwrap(), s);
            assert_eq!(serde_json::from_str::<Format>(s).unwrap(), f);
            assert_eq!(format!("\"{f}\""), s);
        }
        assert_eq!(SchemaType::from_registry(None), Some(SchemaType::Avro));
        assert_eq!(
            SchemaType::from_registry(Some("protobuf")),
            Some(SchemaType::Protobuf)
        );
        assert_eq!(SchemaType::from_registry(Some("XML")), None);
    }

    #[test]
    fn long_identifiers_are_shortened_stably() {
        let a = "a".repeat(70);
        let short = pg_identifier(&a);
        assert_eq!(short.len(), 63);
        assert_eq!(short, pg_identifier(&a));
        assert_ne!(short, pg_identifier(&format!("{a}b")));
        assert_eq!(pg_identifier("abc"), "abc");
        let multi = "é".repeat(40); // 80 bytes
        assert!(pg_identifier(&multi).len() <= 63);
    }

    #[test]
    fn floats() {
        assert_eq!(float_json(0.1f32).to_string(), "0.1");
        assert_eq!(float_json(0.1f64).to_string(), "0.1");
        assert_eq!(float_json(1e21f64).to_string(), "1e+21");
        assert_eq!(float_json(3.0f64).to_string(), "3");
        assert_eq!(float_json(f64::NAN), Value::String("NaN".into()));
        assert_eq!(float_json(f32::INFINITY), Value::String("Infinity".into()));
        assert_eq!(
            float_json(f64::NEG_INFINITY),
            Value::String("-Infinity".into())
        );
    }

    #[test]
    fn decode_rejects_json_format_and_wrong_type() {
        let s = Schema::parse(5, SchemaType::Json, "{}", &[]).unwrap();
        let msg = wire::encode(5, b"{}");
        assert_eq!(decode(Format::Json, &msg, &s), Err(DecodeError::NotSchemad));
        let e = decode(Format::Avro, &msg, &s).unwrap_err();
        assert_eq!(e.reason(), "wrong_schema_type");
        assert_eq!(e.schema_id(), Some(5));
        let e = decode(Format::JsonSchema, &wire::encode(6, b"{}"), &s).unwrap_err();
        assert_eq!(e.reason(), "schema_id_mismatch");
    }
}

/// Rough decode cost next to plain JSON parsing (run in release:
/// `cargo test --release --lib -- --ignored decode_throughput --nocapture`).
#[cfg(test)]
mod throughput {
    use super::*;
    use apache_avro::types::Value as A;
    use std::time::Instant;

    /// Messages per measurement.
    const N: usize = 200_000;

    #[test]
    #[ignore = "timing; run in release"]
    fn decode_throughput() {
        let (s, avro) = avro_order();
        let json_text =
            crate::json::hash::canonical_string(&decode(Format::Avro, &avro, &s).unwrap());
        let (p, proto) = protobuf_order();
        println!(
            "json: {json_text} ({} bytes), avro {} bytes, protobuf {} bytes",
            json_text.len(),
            avro.len(),
            proto.len()
        );
        let j = rate("json", &|| serde_json::from_str(&json_text).unwrap());
        let a = rate("avro", &|| decode(Format::Avro, &avro, &s).unwrap());
        let pb = rate("protobuf", &|| {
            decode(Format::Protobuf, &proto, &p).unwrap()
        });
        println!("avro/json {:.2}, protobuf/json {:.2}", a / j, pb / j);
        println!("reader build alone: {:.0} /s", reader_build_rate(&s));
    }

    /// A typical order event: its Avro schema and the framed message.
    fn avro_order() -> (Schema, Vec<u8>) {
        let text = r#"{"type":"record","name":"Order","fields":[
            {"name":"order_id","type":"long"},{"name":"customer","type":"string"},
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
            {"name":"status","type":{"type":"enum","name":"S","symbols":["NEW","PAID","SHIPPED"]}},
            {"name":"updated_at","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"note","type":["null","string"],"default":null},
            {"name":"version","type":"long"}]}"#;
        let s = Schema::parse(1, SchemaType::Avro, text, &[]).unwrap();
        let body = s
            .as_avro()
            .unwrap()
            .encode(A::Record(vec![
                ("order_id".into(), A::Long(123_456_789)),
                ("customer".into(), A::String("customer-4711".into())),
                (
                    "amount".into(),
                    A::Decimal(apache_avro::Decimal::from([0x01, 0xe2, 0x40])),
                ),
                ("status".into(), A::Enum(1, "PAID".into())),
                ("updated_at".into(), A::TimestampMillis(1_700_000_000_123)),
                (
                    "note".into(),
                    A::Union(1, Box::new(A::String("leave at door".into()))),
                ),
                ("version".into(), A::Long(3)),
            ]))
            .unwrap();
        let framed = wire::encode(1, &body);
        (s, framed)
    }

    /// The same event as Protobuf (amount as text, status as a number).
    fn protobuf_order() -> (Schema, Vec<u8>) {
        let proto_text = "syntax = \"proto3\"; message Order { int64 order_id = 1; string customer = 2; \
            string amount = 3; int32 status = 4; int64 updated_at = 5; optional string note = 6; int64 version = 7; }";
        let p = Schema::parse(2, SchemaType::Protobuf, proto_text, &[]).unwrap();
        let framed = wire::encode_protobuf(
            2,
            &[0],
            &[
                0x08, 0x95, 0x9a, 0xef, 0x3a, 0x12, 0x0d, b'c', b'u', b's', b't', b'o', b'm', b'e',
                b'r', b'-', b'4', b'7', b'1', b'1', 0x1a, 0x07, b'1', b'2', b'3', b'4', b'.', b'5',
                b'6', 0x20, 0x01, 0x28, 0xfb, 0x8f, 0xe3, 0xd6, 0xbc, 0x31, 0x32, 0x0d, b'l', b'e',
                b'a', b'v', b'e', b' ', b'a', b't', b' ', b'd', b'o', b'o', b'r', 0x38, 0x03,
            ],
        );
        (p, framed)
    }

    /// Calls `f` [`N`] times; prints and returns the rate per second.
    fn rate(name: &str, f: &dyn Fn() -> Value) -> f64 {
        let t = Instant::now();
        let mut keep = 0usize;
        for _ in 0..N {
            // Use the result so the work cannot be optimised away.
            keep += f().as_object().map_or(0, |o| o.len());
        }
        let per_s = N as f64 / t.elapsed().as_secs_f64();
        println!("{name:>9}: {per_s:>10.0} msg/s ({keep})");
        per_s
    }

    /// What building apache-avro's datum reader costs, done once per message.
    fn reader_build_rate(s: &Schema) -> f64 {
        let t = Instant::now();
        for _ in 0..N {
            let r = apache_avro::reader::datum::GenericDatumReader::builder(
                s.as_avro().unwrap().schema(),
            )
            .build()
            .unwrap();
            std::hint::black_box(&r);
        }
        N as f64 / t.elapsed().as_secs_f64()
    }
}

/// The writer schemas a batch needs, fetched before it is prepared (the
/// registry is I/O; preparing is pure). An id the registry does not know, or
/// whose schema is unusable, maps to the reason its messages are dead letters.
#[derive(Clone, Debug, Default)]
pub struct SchemaSet {
    by_id: std::collections::HashMap<u32, Result<std::sync::Arc<Schema>, Unusable>>,
    /// Connect schemas embedded in JSON change events, met before this batch.
    pub connect: connect::ConnectCache,
}

/// Why a schema id cannot decode anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    /// `unknown_schema` (the registry answered "not found") or
    /// `invalid_schema` (it does not parse or compile).
    pub reason: &'static str,
    pub error: String,
}

impl SchemaSet {
    pub fn contains(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn insert(&mut self, id: u32, schema: Result<std::sync::Arc<Schema>, Unusable>) {
        self.by_id.insert(id, schema);
    }

    /// Usable schemas, in id order.
    pub fn usable(&self) -> Vec<std::sync::Arc<Schema>> {
        let mut v: Vec<_> = self.by_id.values().filter_map(|s| s.clone().ok()).collect();
        v.sort_by_key(|s| s.id());
        v
    }

    /// The Connect schema of a framed message's writer schema (Avro change
    /// events), `None` when the frame names no usable schema.
    pub fn connect_of(
        &self,
        bytes: &[u8],
    ) -> Option<Result<std::sync::Arc<connect::Known>, String>> {
        let id = schema_id(bytes).ok()?;
        match self.by_id.get(&id)? {
            Ok(schema) => Some(schema.connect()),
            Err(_) => None,
        }
    }

    /// Decodes a framed message; `Err((reason, error))` names why it is a
    /// dead letter. Every id the message can name must have been looked up.
    pub fn decode(&self, format: Format, bytes: &[u8]) -> Result<Value, (&'static str, String)> {
        let id = schema_id(bytes).map_err(|e| (e.reason(), e.to_string()))?;
        match self.by_id.get(&id) {
            Some(Ok(schema)) => {
                decode(format, bytes, schema).map_err(|e| (e.reason(), e.to_string()))
            }
            Some(Err(u)) => Err((u.reason, u.error.clone())),
            None => Err((
                "unknown_schema",
                format!("schema {id} was not looked up before decoding"),
            )),
        }
    }
}
