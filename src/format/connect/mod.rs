//! Kafka Connect schemas: the type system Debezium describes change events
//! in. The JSON converter embeds one in every message
//! (`{"schema": …, "payload": …}`); this module parses it once per distinct
//! schema, converts payload values by it into the text Postgres reads, and
//! derives the Postgres column type a DBA would choose for each field.
//!
//! Types come from, in order: the source column type Debezium propagates
//! (`column.propagate.source.type`: `__debezium.source.column.type`,
//! `.length`, `.scale`), the logical type (`name`: `Decimal`,
//! `io.debezium.time.MicroTimestamp`, …), the primitive type. A schema the
//! sink cannot give an exact column is refused with its name, never guessed.
//!
//! Values (Debezium's encodings, docs/cdc-samples/types):
//! * dates, times and timestamps as days / ms / µs / ns since the epoch or
//!   midnight → ISO text; the ±infinity sentinels PgJDBC produces and
//!   `24:00:00` → what Postgres reads; years before 1 → `… BC`;
//! * `Decimal` (base64 two's complement, `scale`) and
//!   `VariableScaleDecimal` (`{scale, value}`) → exact numbers, any length;
//!   `decimal.handling.mode=string`'s `NAN`, `POSITIVE_INFINITY`,
//!   `NEGATIVE_INFINITY` → `NaN`, `Infinity`, `-Infinity`;
//! * `Json` (a string holding JSON) → that JSON; `Bits` (little-endian
//!   bytes) → a bit string; other bytes (base64) → `\x` hex;
//! * durations (`MicroDuration`) → `N microseconds`.

mod mysql;
mod protobuf;
mod table;
mod value;

pub use protobuf::from_protobuf;
pub use table::{debezium_shape, pg_type, ColumnDef, SourceFamily, TableShape};
pub use value::convert;
pub(crate) use value::{date_infinity, timestamp_infinity};

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use rustc_hash::FxBuildHasher;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A Connect schema.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectSchema {
    pub kind: Kind,
    /// The logical type (`org.apache.kafka.connect.data.Decimal`, …) or the
    /// record name (`server.schema.table.Value`).
    pub name: Option<String>,
    pub optional: bool,
    pub parameters: BTreeMap<String, String>,
    /// The field's default, in the payload's encoding.
    pub default: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Boolean,
    String,
    Bytes,
    Array(Box<ConnectSchema>),
    Map(Box<ConnectSchema>, Box<ConnectSchema>),
    Struct(Vec<Field>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: String,
    pub schema: ConnectSchema,
}

const SOURCE_TYPE: &str = "__debezium.source.column.type";
const SOURCE_LENGTH: &str = "__debezium.source.column.length";
const SOURCE_SCALE: &str = "__debezium.source.column.scale";

impl ConnectSchema {
    /// Parses the JSON converter's schema object.
    pub fn from_json(v: &Value) -> Result<ConnectSchema, String> {
        let Value::Object(o) = v else {
            return Err(format!("a Connect schema must be an object, not {v}"));
        };
        let kind_name = o
            .get("type")
            .and_then(Value::as_str)
            .ok_or("a Connect schema without `type`")?;
        let kind = match kind_name {
            "int8" => Kind::Int8,
            "int16" => Kind::Int16,
            "int32" => Kind::Int32,
            "int64" => Kind::Int64,
            "float" | "float32" => Kind::Float32,
            "double" | "float64" => Kind::Float64,
            "boolean" => Kind::Boolean,
            "string" => Kind::String,
            "bytes" => Kind::Bytes,
            "array" => Kind::Array(Box::new(Self::from_json(
                o.get("items").ok_or("an array schema without `items`")?,
            )?)),
            "map" => Kind::Map(
                Box::new(Self::from_json(
                    o.get("keys").ok_or("a map schema without `keys`")?,
                )?),
                Box::new(Self::from_json(
                    o.get("values").ok_or("a map schema without `values`")?,
                )?),
            ),
            "struct" => {
                let fields = o.get("fields").and_then(Value::as_array);
                let mut out = Vec::new();
                for f in fields.into_iter().flatten() {
                    let name = f
                        .get("field")
                        .and_then(Value::as_str)
                        .ok_or("a struct field without `field`")?;
                    out.push(Field {
                        name: name.to_string(),
                        schema: Self::from_json(f)?,
                    });
                }
                Kind::Struct(out)
            }
            other => return Err(format!("unknown Connect type `{other}`")),
        };
        let parameters = o
            .get("parameters")
            .and_then(Value::as_object)
            .map(|p| {
                p.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ConnectSchema {
            kind,
            name: o.get("name").and_then(Value::as_str).map(str::to_string),
            optional: o.get("optional").and_then(Value::as_bool).unwrap_or(false),
            parameters,
            default: o.get("default").filter(|d| !d.is_null()).cloned(),
        })
    }

    /// The Connect schema an Avro schema written by Connect's Avro
    /// converters describes: records, nullable unions, `connect.name`,
    /// `connect.parameters`, `connect.type` (`int16`, `int8`) and Avro's
    /// `decimal` logical type. Named types may be referenced after their
    /// definition.
    pub fn from_avro_json(v: &Value) -> Result<ConnectSchema, String> {
        avro_node(v, None, &mut HashMap::new())
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.parameters.get(key).map(String::as_str)
    }

    /// The schema of a struct's field.
    pub fn field(&self, name: &str) -> Option<&ConnectSchema> {
        match &self.kind {
            Kind::Struct(fields) => fields.iter().find(|f| f.name == name).map(|f| &f.schema),
            _ => None,
        }
    }

    fn logical(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    fn param_u32(&self, key: &str) -> Option<u32> {
        self.param(key)?.parse().ok()
    }

    /// The source column's type as Debezium propagated it, upper case.
    fn source_type(&self) -> Option<&str> {
        self.param(SOURCE_TYPE)
    }
}

fn primitive(kind: Kind) -> ConnectSchema {
    ConnectSchema {
        kind,
        name: None,
        optional: false,
        parameters: BTreeMap::new(),
        default: None,
    }
}

/// One node of an Avro schema; `ns` the enclosing namespace, `named` the
/// named types defined so far (by full name).
fn avro_node(
    v: &Value,
    ns: Option<&str>,
    named: &mut HashMap<String, ConnectSchema>,
) -> Result<ConnectSchema, String> {
    match v {
        Value::String(t) => Ok(match t.as_str() {
            "int" => primitive(Kind::Int32),
            "long" => primitive(Kind::Int64),
            "float" => primitive(Kind::Float32),
            "double" => primitive(Kind::Float64),
            "boolean" => primitive(Kind::Boolean),
            "string" => primitive(Kind::String),
            "bytes" => primitive(Kind::Bytes),
            other => {
                let full = match (other.contains('.'), ns) {
                    (false, Some(ns)) => format!("{ns}.{other}"),
                    _ => other.to_string(),
                };
                named
                    .get(&full)
                    .or_else(|| named.get(other))
                    .cloned()
                    .ok_or_else(|| format!("Avro type `{other}` is not defined"))?
            }
        }),
        Value::Array(branches) => {
            let non_null: Vec<&Value> = branches.iter().filter(|b| *b != "null").collect();
            let [only] = non_null.as_slice() else {
                return Err("an Avro union of several types has no Connect schema".into());
            };
            let mut s = avro_node(only, ns, named)?;
            s.optional = non_null.len() < branches.len();
            Ok(s)
        }
        Value::Object(o) => avro_object(o, ns, named),
        other => Err(format!("not an Avro schema: {other}")),
    }
}

fn avro_object(
    o: &Map<String, Value>,
    ns: Option<&str>,
    named: &mut HashMap<String, ConnectSchema>,
) -> Result<ConnectSchema, String> {
    let ty = o.get("type").ok_or("an Avro schema without `type`")?;
    let ns_here = o.get("namespace").and_then(Value::as_str).or(ns);
    let full_name = o
        .get("name")
        .and_then(Value::as_str)
        .map(|n| match ns_here {
            Some(ns) if !n.contains('.') => format!("{ns}.{n}"),
            _ => n.to_string(),
        });
    let mut s = match ty.as_str() {
        Some("record") => primitive(Kind::Struct(avro_fields(o, ns_here, named)?)),
        Some("array") => {
            let items = avro_node(
                o.get("items").ok_or("an array without `items`")?,
                ns_here,
                named,
            )?;
            primitive(Kind::Array(Box::new(items)))
        }
        Some("map") => {
            let values = avro_node(
                o.get("values").ok_or("a map without `values`")?,
                ns_here,
                named,
            )?;
            primitive(Kind::Map(
                Box::new(primitive(Kind::String)),
                Box::new(values),
            ))
        }
        Some("enum") => primitive(Kind::String),
        Some("fixed") => primitive(Kind::Bytes),
        _ => avro_node(ty, ns_here, named)?,
    };
    connect_annotations(o, &mut s);
    if let Some(n) = full_name.clone() {
        s.name.get_or_insert(n);
    }
    if let Some(full) = full_name {
        named.insert(full, s.clone());
    }
    Ok(s)
}

fn avro_fields(
    o: &Map<String, Value>,
    ns: Option<&str>,
    named: &mut HashMap<String, ConnectSchema>,
) -> Result<Vec<Field>, String> {
    let mut fields = Vec::new();
    for f in o
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a field without `name`")?;
        let mut schema = avro_node(f.get("type").ok_or("a field without `type`")?, ns, named)?;
        schema.default = f.get("default").filter(|d| !d.is_null()).cloned();
        fields.push(Field {
            name: name.to_string(),
            schema,
        });
    }
    Ok(fields)
}

/// `connect.type`, `connect.parameters`, `connect.name`, and Avro's own
/// decimal (as Connect's `Decimal`).
fn connect_annotations(o: &Map<String, Value>, s: &mut ConnectSchema) {
    match o.get("connect.type").and_then(Value::as_str) {
        Some("int8") => s.kind = Kind::Int8,
        Some("int16") => s.kind = Kind::Int16,
        _ => {}
    }
    if let Some(Value::Object(p)) = o.get("connect.parameters") {
        for (k, v) in p {
            if let Some(v) = v.as_str() {
                s.parameters.insert(k.clone(), v.to_string());
            }
        }
    }
    let connect_name = o.get("connect.name").and_then(Value::as_str);
    if o.get("logicalType").and_then(Value::as_str) == Some("decimal") && connect_name.is_none() {
        s.name = Some("org.apache.kafka.connect.data.Decimal".into());
        for (key, param) in [
            ("scale", "scale"),
            ("precision", "connect.decimal.precision"),
        ] {
            if let Some(n) = o.get(key).and_then(Value::as_u64) {
                s.parameters.entry(param.into()).or_insert(n.to_string());
            }
        }
    }
    if let Some(n) = connect_name {
        s.name = Some(n.to_string());
    }
}

// ---------------------------------------------------------------- cache

/// Identifies a schema by content: the first 16 bytes of the SHA-256 of its
/// text (computed once per distinct schema, not per message).
pub type SchemaId = [u8; 16];

/// A parsed schema and its identity.
#[derive(Debug)]
pub struct Known {
    pub id: SchemaId,
    pub schema: ConnectSchema,
    text: Box<str>,
}

impl Known {
    /// `schema`, identified by the text it was read from.
    pub fn new(text: &str, schema: ConnectSchema) -> Known {
        let digest = Sha256::digest(text.as_bytes());
        Known {
            id: digest[..16].try_into().expect("16 bytes"),
            schema,
            text: text.into(),
        }
    }
}

/// The embedded schemas met so far. A message's schema text is looked up by
/// a fast hash and compared in full, so each distinct schema is parsed (and
/// hashed with SHA-256) once, and no two texts share an entry.
#[derive(Clone, Debug, Default)]
pub struct ConnectCache {
    by_hash: HashMap<u64, Vec<Arc<Known>>, FxBuildHasher>,
}

impl ConnectCache {
    /// The parsed schema of `text`, parsing it on first sight.
    pub fn get_or_parse(&mut self, text: &str) -> Result<Arc<Known>, String> {
        let h = FxBuildHasher.hash_one(text);
        if let Some(k) = self
            .by_hash
            .get(&h)
            .and_then(|v| v.iter().find(|k| &*k.text == text))
        {
            return Ok(k.clone());
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("embedded schema is not JSON: {e}"))?;
        let known = Arc::new(Known::new(text, ConnectSchema::from_json(&value)?));
        self.by_hash.entry(h).or_default().push(known.clone());
        Ok(known)
    }

    /// Adds the entries of `other` this cache lacks.
    pub fn absorb(&mut self, other: &ConnectCache) {
        for (h, entries) in &other.by_hash {
            let mine = self.by_hash.entry(*h).or_default();
            for e in entries {
                if !mine.iter().any(|m| m.id == e.id) {
                    mine.push(e.clone());
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_hash.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}
