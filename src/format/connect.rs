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

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use num_bigint::BigInt;
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

// ---------------------------------------------------------------- values

/// Converts `v` as described by `schema` into the JSON whose text Postgres
/// reads for the column type [`pg_type`] gives.
pub fn convert(v: Value, schema: &ConnectSchema) -> Value {
    if v.is_null() {
        return v;
    }
    match (&schema.kind, v) {
        (Kind::Struct(_), Value::Object(m))
            if schema.logical() == "io.debezium.data.VariableScaleDecimal" =>
        {
            variable_scale_decimal(&m).unwrap_or(Value::Object(m))
        }
        (Kind::Struct(_), Value::Object(m)) if schema.logical() == POINT => {
            point(&m).unwrap_or(Value::Object(m))
        }
        (Kind::Struct(fields), Value::Object(m)) => Value::Object(
            m.into_iter()
                .map(|(k, x)| {
                    let x = match fields.iter().find(|f| f.name == k) {
                        Some(f) => convert(x, &f.schema),
                        None => x,
                    };
                    (k, x)
                })
                .collect(),
        ),
        (Kind::Array(item), Value::Array(items)) => {
            Value::Array(items.into_iter().map(|x| convert(x, item)).collect())
        }
        (Kind::Map(_, values), Value::Object(m)) => Value::Object(
            m.into_iter()
                .map(|(k, x)| (k, convert(x, values)))
                .collect::<Map<_, _>>(),
        ),
        (_, v) => scalar(schema, v),
    }
}

/// A scalar of a logical (or plain) Connect type, as Postgres reads it.
fn scalar(schema: &ConnectSchema, v: Value) -> Value {
    let int = v.as_i64();
    let converted = match schema.logical() {
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => {
            int.and_then(date).map(Value::String)
        }
        "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time" => int
            .and_then(|ms| time_of_day(ms.checked_mul(1_000)?))
            .map(Value::String),
        "io.debezium.time.MicroTime" => int.and_then(time_of_day).map(Value::String),
        "io.debezium.time.NanoTime" => int
            .and_then(|ns| time_of_day(ns / 1_000))
            .map(Value::String),
        "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => {
            int.and_then(|ms| timestamp(ms, 1_000)).map(Value::String)
        }
        "io.debezium.time.MicroTimestamp" => int.and_then(|us| timestamp(us, 1)).map(Value::String),
        "io.debezium.time.NanoTimestamp" => int
            .and_then(|ns| timestamp(ns.div_euclid(1_000), 1))
            .map(Value::String),
        "io.debezium.time.MicroDuration" => {
            int.map(|us| Value::String(format!("{us} microseconds")))
        }
        "io.debezium.time.NanoDuration" => {
            int.map(|ns| Value::String(format!("{} microseconds", ns / 1_000)))
        }
        "io.debezium.data.Json" => v.as_str().and_then(|s| serde_json::from_str(s).ok()),
        "org.apache.kafka.connect.data.Decimal" => {
            let scale = schema.param_u32("scale").unwrap_or(0);
            v.as_str().and_then(|b| decimal(b, scale))
        }
        "io.debezium.data.Bits" => v
            .as_str()
            .and_then(bytes_of)
            .map(|b| Value::String(bit_string(&b, schema.param_u32("length")))),
        _ => match (&schema.kind, &v) {
            (Kind::Bytes, Value::String(b)) => bytes_hex(b).map(Value::String),
            (Kind::Boolean, Value::Bool(b)) if schema.source_type() == Some("BIT") => {
                Some(Value::String(if *b { "1" } else { "0" }.into()))
            }
            (Kind::String, Value::String(s)) if is_numeric_source(schema) => {
                special_numeric(s).map(|t| Value::String(t.into()))
            }
            _ => None,
        },
    };
    converted.unwrap_or(v)
}

/// Debezium's Postgres `point`: `{x, y, wkb, srid}`.
const POINT: &str = "io.debezium.data.geometry.Point";

/// A point as Postgres reads it, `(x,y)`, the coordinates' text as sent.
fn point(m: &Map<String, Value>) -> Option<Value> {
    let (x, y) = (m.get("x")?, m.get("y")?);
    (x.is_number() && y.is_number()).then(|| Value::String(format!("({x},{y})")))
}

/// A string-encoded decimal (`decimal.handling.mode=string`) of a numeric
/// source column.
fn is_numeric_source(schema: &ConnectSchema) -> bool {
    matches!(schema.source_type(), Some("NUMERIC" | "DECIMAL" | "MONEY"))
}

/// Debezium's spellings of numeric specials, in Postgres's.
fn special_numeric(s: &str) -> Option<&'static str> {
    match s {
        "NAN" => Some("NaN"),
        "POSITIVE_INFINITY" => Some("Infinity"),
        "NEGATIVE_INFINITY" => Some("-Infinity"),
        _ => None,
    }
}

/// PgJDBC turns a date's `±infinity` into these day counts (streamed and
/// snapshotted rows differ; docs/cdc-samples/types).
pub(crate) fn date_infinity(days: i64) -> Option<&'static str> {
    match days {
        -2147472691 | -625821272 => Some("-infinity"),
        -2147472692 | -622191234 => Some("infinity"),
        _ => None,
    }
}

/// Days since 1970-01-01.
fn date(days: i64) -> Option<String> {
    if let Some(infinity) = date_infinity(days) {
        return Some(infinity.into());
    }
    let d = NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(TimeDelta::try_days(days)?)?;
    Some(format_date(d))
}

/// ISO date; Postgres writes years before 1 as `… BC` (there is no year 0).
fn format_date(d: NaiveDate) -> String {
    if d.year() > 0 {
        d.format("%Y-%m-%d").to_string()
    } else {
        format!("{:04}-{:02}-{:02} BC", 1 - d.year(), d.month(), d.day())
    }
}

fn time_of_day(micros: i64) -> Option<String> {
    // `24:00:00` is a valid time in Postgres (the end of the day).
    if micros == 86_400_000_000 {
        return Some("24:00:00".into());
    }
    let secs = u32::try_from(micros.div_euclid(1_000_000)).ok()?;
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1_000).ok()?;
    let t = NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)?;
    Some(t.format("%H:%M:%S%.6f").to_string())
}

/// A `timestamp without time zone` (Debezium encodes it as if UTC), given
/// in units of `unit_us` microseconds. PgJDBC's `±infinity` (milliseconds,
/// copied into microsecond fields too) become `±infinity`.
fn timestamp(value: i64, unit_us: i64) -> Option<String> {
    if let Some(infinity) = timestamp_infinity(value, unit_us) {
        return Some(infinity.into());
    }
    let t: NaiveDateTime =
        DateTime::from_timestamp_micros(value.checked_mul(unit_us)?)?.naive_utc();
    let time = t.format("%H:%M:%S%.6f");
    Some(if t.year() > 0 {
        format!("{}T{time}", t.format("%Y-%m-%d"))
    } else {
        format!(
            "{} {time} BC",
            format_date(t.date()).trim_end_matches(" BC")
        )
    })
}

/// PgJDBC's `±infinity` timestamps: milliseconds, which Debezium also
/// copies unscaled into microsecond fields. `value` counts `unit_us`
/// microseconds.
pub(crate) fn timestamp_infinity(value: i64, unit_us: i64) -> Option<&'static str> {
    const INFINITY_MS: i64 = 9_223_372_036_825_200;
    const NEG_INFINITY_MS: i64 = -9_223_372_036_832_400;
    let scales: &[i64] = if unit_us == 1 { &[1, 1_000] } else { &[1] };
    scales.iter().find_map(|k| match value {
        v if v == INFINITY_MS * k => Some("infinity"),
        v if v == NEG_INFINITY_MS * k => Some("-infinity"),
        _ => None,
    })
}

/// Bytes as Debezium's JSON converter writes them (base64), or as a
/// registry format decodes them (`\x` hex).
fn bytes_of(s: &str) -> Option<Vec<u8>> {
    match s.strip_prefix("\\x") {
        Some(h) => hex::decode(h).ok(),
        None => decode_base64(s),
    }
}

fn decode_base64(b: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(b).ok()
}

/// Base64 bytes as Postgres's bytea input (`\x` hex); bytes in that form
/// already are left alone (`None`).
fn bytes_hex(b: &str) -> Option<String> {
    if b.starts_with("\\x") {
        return None;
    }
    decode_base64(b).map(|bytes| format!("\\x{}", hex::encode(bytes)))
}

/// A bit string from Debezium's `Bits` encoding: the bits read as a binary
/// number, written as little-endian bytes (Java's `BitSet.toByteArray`).
/// `length` is the column's width (`bit(n)`); a `varbit`'s (2147483647, or
/// its maximum) cannot restore leading zeros, which Debezium dropped.
fn bit_string(bytes: &[u8], length: Option<u32>) -> String {
    let mut bits = String::with_capacity(bytes.len() * 8);
    for byte in bytes.iter().rev() {
        bits.push_str(&format!("{byte:08b}"));
    }
    let significant = bits.trim_start_matches('0');
    match length {
        Some(n) if (n as usize) < 1 << 20 && n as usize >= significant.len() => {
            format!("{significant:0>width$}", width = n as usize)
        }
        _ if significant.is_empty() && bytes.is_empty() => String::new(),
        _ if significant.is_empty() => "0".into(),
        _ => significant.to_string(),
    }
}

/// Big-endian two's complement unscaled value and a scale → exact decimal.
fn decimal(encoded: &str, scale: u32) -> Option<Value> {
    let bytes = bytes_of(encoded)?;
    if bytes.is_empty() {
        return None;
    }
    let unscaled = BigInt::from_signed_bytes_be(&bytes);
    Some(Value::Number(scaled_number(&unscaled, scale)?))
}

fn variable_scale_decimal(m: &Map<String, Value>) -> Option<Value> {
    let scale = u32::try_from(m.get("scale")?.as_i64()?).ok()?;
    decimal(m.get("value")?.as_str()?, scale)
}

/// `unscaled × 10^-scale` as a JSON number with exactly those digits.
pub(crate) fn scaled_number(unscaled: &BigInt, scale: u32) -> Option<serde_json::Number> {
    let digits = unscaled.magnitude().to_string();
    let scale = scale as usize;
    let text = if scale == 0 {
        digits
    } else if digits.len() > scale {
        format!(
            "{}.{}",
            &digits[..digits.len() - scale],
            &digits[digits.len() - scale..]
        )
    } else {
        format!("0.{}{}", "0".repeat(scale - digits.len()), digits)
    };
    let sign = if unscaled.sign() == num_bigint::Sign::Minus {
        "-"
    } else {
        ""
    };
    serde_json::from_str(&format!("{sign}{text}")).ok()
}

// ---------------------------------------------------------------- types

/// The Postgres type of a column holding values of `schema`, or why there
/// is none the sink can fill exactly.
pub fn pg_type(schema: &ConnectSchema) -> Result<String, String> {
    if let Some(t) = source_pg_type(schema) {
        return Ok(t);
    }
    if let Some(t) = logical_pg_type(schema) {
        return t;
    }
    Ok(match &schema.kind {
        Kind::Int8 | Kind::Int16 => "smallint".into(),
        Kind::Int32 => "integer".into(),
        Kind::Int64 => "bigint".into(),
        Kind::Float32 => "real".into(),
        Kind::Float64 => "double precision".into(),
        Kind::Boolean => "boolean".into(),
        Kind::String => "text".into(),
        Kind::Bytes => "bytea".into(),
        Kind::Array(item) => {
            let mut item = (**item).clone();
            // The array's propagated type (`_NUMERIC`, length, scale)
            // describes its elements.
            if let Some(t) = schema.source_type().and_then(|t| t.strip_prefix('_')) {
                item.parameters.insert(SOURCE_TYPE.into(), t.to_string());
                for k in [SOURCE_LENGTH, SOURCE_SCALE] {
                    if let Some(v) = schema.param(k) {
                        item.parameters.insert(k.into(), v.into());
                    }
                }
            }
            if matches!(item.kind, Kind::Array(_)) {
                return Err(describe(
                    schema,
                    "arrays of arrays have no exact column type",
                ));
            }
            format!("{}[]", pg_type(&item)?)
        }
        // Connect maps and plain structs are structured values: jsonb keeps
        // them whole.
        Kind::Map(..) | Kind::Struct(_) if schema.name.is_none() || is_record(schema) => {
            "jsonb".into()
        }
        Kind::Map(..) | Kind::Struct(_) => {
            return Err(describe(
                schema,
                "has no Postgres column type the sink can fill exactly",
            ))
        }
    })
}

/// A struct named like a record (`server.schema.table.Value`), not a
/// logical type.
fn is_record(schema: &ConnectSchema) -> bool {
    !schema.logical().starts_with("io.debezium.") && !schema.logical().starts_with("org.apache.")
}

fn describe(schema: &ConnectSchema, problem: &str) -> String {
    match &schema.name {
        Some(n) => format!("Connect type `{n}` {problem}"),
        None => format!("Connect type {:?} {problem}", schema.kind),
    }
}

/// By logical name; `None` for plain types.
fn logical_pg_type(schema: &ConnectSchema) -> Option<Result<String, String>> {
    let t = match schema.logical() {
        "org.apache.kafka.connect.data.Decimal" => {
            match (
                schema.param_u32("connect.decimal.precision"),
                schema.param_u32("scale"),
            ) {
                (Some(p), Some(s)) if (1..=1000).contains(&p) && s <= p => {
                    format!("numeric({p},{s})")
                }
                // Money and other decimals without a precision: exact values,
                // no scale to enforce.
                _ => "numeric".into(),
            }
        }
        "io.debezium.data.VariableScaleDecimal" => "numeric".into(),
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => "date".into(),
        "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time" => "time(3)".into(),
        "io.debezium.time.MicroTime" | "io.debezium.time.NanoTime" => "time".into(),
        "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => {
            "timestamp(3)".into()
        }
        "io.debezium.time.MicroTimestamp" | "io.debezium.time.NanoTimestamp" => "timestamp".into(),
        "io.debezium.time.ZonedTimestamp" => "timestamptz".into(),
        "io.debezium.time.ZonedTime" => "timetz".into(),
        "io.debezium.time.MicroDuration"
        | "io.debezium.time.NanoDuration"
        | "io.debezium.time.Interval" => "interval".into(),
        "io.debezium.time.Year" => "integer".into(),
        "io.debezium.data.Json" => "jsonb".into(),
        "io.debezium.data.Uuid" => "uuid".into(),
        "io.debezium.data.Xml" => "xml".into(),
        "io.debezium.data.Enum" | "io.debezium.data.EnumSet" | "io.debezium.data.Ltree" => {
            "text".into()
        }
        POINT => "point".into(),
        "io.debezium.data.Bits" => match schema.param_u32("length") {
            Some(n) if n < 2147483647 => format!("bit varying({n})"),
            _ => "bit varying".into(),
        },
        n if n.starts_with("io.debezium.data.geometry.") => {
            return Some(Err(describe(
                schema,
                "(a geometry) has no exact column type without PostGIS; map it with `columns`",
            )))
        }
        _ => return None,
    };
    Some(Ok(t))
}

/// The type Debezium propagated from a Postgres source column, where it
/// fits the value's Connect encoding; `None` otherwise (user-defined types
/// such as enums and domains, which the target may not have).
fn source_pg_type(schema: &ConnectSchema) -> Option<String> {
    let t = schema.source_type()?;
    let length = schema.param_u32(SOURCE_LENGTH);
    let scale = schema.param_u32(SOURCE_SCALE);
    let precision = |base: &str| match scale {
        Some(s) if s < 6 => format!("{base}({s})"),
        _ => base.to_string(),
    };
    let kind = &schema.kind;
    let string_like = matches!(kind, Kind::String);
    Some(match t {
        "BOOL" if matches!(kind, Kind::Boolean) => "boolean".into(),
        "INT2" => "smallint".into(),
        "INT4" => "integer".into(),
        "INT8" => "bigint".into(),
        "FLOAT4" => "real".into(),
        "FLOAT8" => "double precision".into(),
        "NUMERIC" | "DECIMAL" => match (length, scale) {
            // 0 (snapshot) and 131089 (streaming) mean "no precision".
            (Some(p), s) if (1..=1000).contains(&p) => format!("numeric({p},{})", s.unwrap_or(0)),
            _ => "numeric".into(),
        },
        "MONEY" => "money".into(),
        "TEXT" if string_like => "text".into(),
        "VARCHAR" if string_like => match length {
            Some(n) if (1..=10_485_760).contains(&n) => format!("varchar({n})"),
            _ => "varchar".into(),
        },
        "BPCHAR" if string_like => match length {
            Some(n) if (1..=10_485_760).contains(&n) => format!("char({n})"),
            _ => "char".into(),
        },
        "DATE" => "date".into(),
        "TIME" => precision("time"),
        "TIMETZ" => precision("timetz"),
        "TIMESTAMP" => precision("timestamp"),
        "TIMESTAMPTZ" => precision("timestamptz"),
        "INTERVAL" => "interval".into(),
        "UUID" => "uuid".into(),
        "JSON" => "json".into(),
        // hstore needs an extension the target may lack; its JSON form
        // (Debezium's default) keeps every pair.
        "JSONB" | "HSTORE" => "jsonb".into(),
        "XML" => "xml".into(),
        "BYTEA" if matches!(kind, Kind::Bytes) => "bytea".into(),
        "BIT" => match length {
            Some(n) if (1..2147483647).contains(&n) => format!("bit({n})"),
            _ => "bit varying".into(),
        },
        "VARBIT" => match length {
            Some(n) if (1..2147483647).contains(&n) => format!("bit varying({n})"),
            _ => "bit varying".into(),
        },
        "INET" | "CIDR" | "MACADDR" | "MACADDR8" | "INT4RANGE" | "INT8RANGE" | "NUMRANGE"
        | "TSRANGE" | "TSTZRANGE" | "DATERANGE"
            if string_like =>
        {
            t.to_ascii_lowercase()
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------- tables

/// A column of a table created from a change event's schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDef {
    /// The source column's name, exactly (quote it in SQL).
    pub name: String,
    pub pg_type: String,
    pub nullable: bool,
    /// The column's default as Postgres reads it (the source's default,
    /// which the source filled existing rows with when the column was added).
    pub default: Option<String>,
}

/// The table a Debezium capture of one source table needs: its columns in
/// source order and its primary key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableShape {
    pub columns: Vec<ColumnDef>,
    pub key: Vec<String>,
}

/// The shape of the table a Debezium change event's value schema (the
/// `Envelope`, whose `after` is the row) and key schema (its primary key
/// columns) describe.
pub fn debezium_shape(
    value: &ConnectSchema,
    key: Option<&ConnectSchema>,
) -> Result<TableShape, String> {
    let row = value
        .field("after")
        .or_else(|| value.field("before"))
        .ok_or("the value schema is not a Debezium envelope (no `after` or `before` field)")?;
    let Kind::Struct(fields) = &row.kind else {
        return Err("the envelope's `after` is not a struct".into());
    };
    let mut columns = Vec::with_capacity(fields.len());
    for f in fields {
        if f.name.len() > 63 {
            return Err(format!(
                "column `{}` is longer than Postgres's 63-byte identifiers",
                f.name
            ));
        }
        let pg_type = pg_type(&f.schema).map_err(|e| format!("column `{}`: {e}", f.name))?;
        let default = f
            .schema
            .default
            .as_ref()
            .map(|d| default_text(d.clone(), &f.schema));
        columns.push(ColumnDef {
            name: f.name.clone(),
            pg_type,
            nullable: f.schema.optional,
            default,
        });
    }
    let key: Vec<String> = match key.map(|k| &k.kind) {
        Some(Kind::Struct(fields)) if !fields.is_empty() => {
            fields.iter().map(|f| f.name.clone()).collect()
        }
        _ => {
            return Err(
                "change events without a key (a source table without a primary key): \
                        give the table one, or set the connector's `message.key.columns`"
                    .into(),
            )
        }
    };
    for k in &key {
        if !columns.iter().any(|c| &c.name == k) {
            return Err(format!("key column `{k}` is not a column of the row"));
        }
    }
    Ok(TableShape { columns, key })
}

/// A default value as the text Postgres reads.
fn default_text(d: Value, schema: &ConnectSchema) -> String {
    match convert(d, schema) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(v: Value) -> ConnectSchema {
        ConnectSchema::from_json(&v).unwrap()
    }

    #[test]
    fn decimals_keep_every_digit_and_sign() {
        let n = |v: i128, s| scaled_number(&BigInt::from(v), s).unwrap().to_string();
        assert_eq!(n(-5, 3), "-0.005");
        assert_eq!(
            n(123_456_789_012_345_678_901_234_567, 10),
            "12345678901234567.8901234567"
        );
        // 39 digits: more than 16 bytes.
        let big = BigInt::parse_bytes(b"-123456789012345678901234567890123456789", 10).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(big.to_signed_bytes_be());
        assert_eq!(
            decimal(&b64, 9).unwrap().to_string(),
            "-123456789012345678901234567890.123456789"
        );
    }

    #[test]
    fn sentinels_and_edges_become_what_postgres_reads() {
        let ts =
            schema(serde_json::json!({"type": "int64", "name": "io.debezium.time.MicroTimestamp"}));
        assert_eq!(
            convert(Value::from(9_223_372_036_825_200_000i64), &ts),
            "infinity"
        );
        assert_eq!(
            convert(Value::from(-9_223_372_036_832_400_000i64), &ts),
            "-infinity"
        );
        assert_eq!(
            convert(Value::from(-1i64), &ts),
            "1969-12-31T23:59:59.999999"
        );
        let tm = schema(serde_json::json!({"type": "int64", "name": "io.debezium.time.MicroTime"}));
        assert_eq!(convert(Value::from(86_400_000_000i64), &tm), "24:00:00");
        let d = schema(serde_json::json!({"type": "int32", "name": "io.debezium.time.Date"}));
        assert_eq!(convert(Value::from(-719_162), &d), "0001-01-01");
        assert_eq!(convert(Value::from(-719_163), &d), "0001-12-31 BC");
        assert_eq!(convert(Value::from(-2_147_472_692i64), &d), "infinity");
        let bits = schema(
            serde_json::json!({"type": "bytes", "name": "io.debezium.data.Bits", "parameters": {"length": "12"}}),
        );
        // 101100000001 as little-endian bytes 01 0b.
        assert_eq!(convert(Value::from("AQs="), &bits), "101100000001");
        assert_eq!(bit_string(&[0x05], Some(4)), "0101");
        let num = schema(
            serde_json::json!({"type": "string", "parameters": {"__debezium.source.column.type": "NUMERIC"}}),
        );
        assert_eq!(convert(Value::from("NEGATIVE_INFINITY"), &num), "-Infinity");
        assert_eq!(convert(Value::from("1.50"), &num), "1.50");
    }

    #[test]
    fn types_come_from_the_source_then_the_logical_type_then_the_primitive() {
        let t = |v: Value| pg_type(&schema(v)).unwrap();
        assert_eq!(t(serde_json::json!({"type": "string"})), "text");
        assert_eq!(
            t(
                serde_json::json!({"type": "string", "parameters": {"__debezium.source.column.type": "VARCHAR", "__debezium.source.column.length": "20"}})
            ),
            "varchar(20)"
        );
        assert_eq!(
            t(
                serde_json::json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "10", "connect.decimal.precision": "38"}})
            ),
            "numeric(38,10)"
        );
        assert_eq!(
            t(
                serde_json::json!({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal", "fields": []})
            ),
            "numeric"
        );
        assert_eq!(
            t(
                serde_json::json!({"type": "int64", "name": "io.debezium.time.Timestamp", "parameters": {"__debezium.source.column.type": "TIMESTAMP", "__debezium.source.column.scale": "0"}})
            ),
            "timestamp(0)"
        );
        assert_eq!(
            t(
                serde_json::json!({"type": "array", "items": {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2", "connect.decimal.precision": "10"}}})
            ),
            "numeric(10,2)[]"
        );
        assert_eq!(
            t(
                serde_json::json!({"type": "string", "name": "io.debezium.data.Enum", "parameters": {"allowed": "a,b", "__debezium.source.column.type": "MOOD"}})
            ),
            "text"
        );
        let named =
            |n: &str| schema(serde_json::json!({"type": "struct", "name": n, "fields": []}));
        assert_eq!(
            pg_type(&named("io.debezium.data.geometry.Point")).unwrap(),
            "point"
        );
        let e = pg_type(&named("io.debezium.data.geometry.Geometry")).unwrap_err();
        assert!(
            e.contains("geometry.Geometry") && e.contains("PostGIS"),
            "{e}"
        );
    }
}
