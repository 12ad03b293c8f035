//! Avro → JSON, with the writer schema only (`apache-avro` 0.22).
//!
//! # Mapping (deterministic; the hash is over this JSON)
//!
//! | Avro                              | JSON                                              | `columns_from_avro` type     |
//! |-----------------------------------|---------------------------------------------------|------------------------------|
//! | null                              | `null`                                            | (only inside unions)         |
//! | boolean                           | `true` / `false`                                  | `boolean`                    |
//! | int / long                        | number                                            | `integer` / `bigint`         |
//! | float / double                    | number, shortest text that reads back to the same float (`0.1`, `1e+21`); NaN, ±Inf → `"NaN"`, `"Infinity"`, `"-Infinity"` | `real` / `double precision` |
//! | string                            | string                                            | `text`                       |
//! | enum                              | the symbol, a string                              | `text`                       |
//! | bytes, fixed                      | `"\\x"` + lowercase hex (Postgres' bytea input)   | `bytea`                      |
//! | union                             | the value of the branch, unwrapped (`["null","string"]` → `null` or the string; no `{"string": …}` wrapper) | the non-null branch's type, nullable; several non-null branches → `jsonb` |
//! | decimal (bytes or fixed)          | number with exactly `scale` fraction digits (`12345.67`, `-0.05`, `1.50`): the unscaled integer printed in base 10, never through a float | `numeric(p,s)` |
//! | big-decimal                       | number, plain notation, its own scale             | `numeric`                    |
//! | uuid                              | string, lowercase hyphenated                      | `uuid`                       |
//! | date                              | `"YYYY-MM-DD"`                                    | `date`                       |
//! | time-millis / time-micros         | `"HH:MM:SS.fff"` / `"HH:MM:SS.ffffff"`            | `time(3)` / `time(6)`        |
//! | timestamp-millis / -micros / -nanos | RFC 3339 UTC, 3 / 6 / 9 fraction digits, `Z` (`2024-05-06T07:08:09.123Z`) | `timestamp(3) with time zone` / `timestamp with time zone` (nanos round to µs in Postgres) |
//! | local-timestamp-millis / -micros / -nanos | same without zone (`2024-05-06T07:08:09.123`) | `timestamp(3) without time zone` / `timestamp without time zone` |
//! | duration (fixed 12)               | ISO 8601 `"P{months}M{days}DT{s}.{mmm}S"`, all three parts always written (`"P1M2DT3.004S"`); Postgres' interval input reads it | `interval` |
//! | array                             | array                                             | scalar items → `type[]`; items that are records, arrays, maps or multi-branch unions → `jsonb` |
//! | map                               | object                                            | `jsonb`                      |
//! | record                            | object with the field names of the schema (order irrelevant: the hash is canonical) | flattened, see below |
//!
//! Kafka Connect / Debezium `connect.name` annotations on primitives
//! (`io.debezium.time.MicroTimestamp`, `…Date`, `…Time`, `…MicroTime`,
//! `…Timestamp`, `…NanoTimestamp`, `io.debezium.data.Uuid`, and Connect's
//! `Date`, `Time`, `Timestamp`) decode as the logical type of the same
//! meaning (see [`CONNECT_LOGICAL_TYPES`]); Debezium's timestamps are local
//! (no zone), Connect's `Timestamp` is UTC.
//!
//! Timestamps/dates outside chrono's range (±262 143 years) or times outside a
//! day are decode errors (poison), not silently clamped.
//!
//! Decoding is strict: a body that ends inside a value is an error (apache-avro
//! alone would read a missing string/boolean/union as null), so are bytes left
//! over after the datum (a body written with another schema often decodes
//! "successfully" to garbage otherwise), and so is a length that would need
//! more than [`MAX_ALLOCATION_BYTES`]. Named-type references (`{"type":"com.x.Money"}` and
//! Confluent schema references) are resolved through the parsed schemata.
//!
//! # Columns from the schema
//!
//! The root must be a record (anything else gives one column `value` holding
//! the whole document). Each field gives a column named like the field, with
//! pointer `/field`. A field whose type is a record (possibly in a nullable
//! union) is flattened: its fields become `parent_child` columns with pointer
//! `/parent/child`, recursively; a nullable parent makes every child nullable.
//! A record type already being flattened (recursive types) becomes one `jsonb`
//! column. Names keep their case (quote them). Collisions (`a_b` the field vs
//! `a.b` flattened) are settled by depth first, then declaration order: the
//! shallowest, earliest claimant keeps the name, later ones get `_2`, `_3`. A
//! name longer than 63 bytes is cut to 54 bytes + `_` + 8 hex digits of its
//! SHA-256. `nullable` is true for unions with `null` (and children of
//! nullable records); an evolving table should match columns by `pointer` and
//! add them nullable regardless (older messages lack them).

use std::collections::{HashMap, HashSet};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{InnerDecimalSchema, Name, RecordSchema, UuidSchema};
use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema as Avro;
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat};
use num_bigint::BigInt;
use serde_json::{Map, Value};

use super::{bytea_hex, connect, float_json, number, only_non_null, whole_value_column};
use super::{ColumnSpec, Flattened, Parent, Reference};

/// Largest single allocation apache-avro may make while decoding (a string,
/// bytes, or an array/map block): 64 MiB, far above any Kafka message.
pub const MAX_ALLOCATION_BYTES: usize = 64 << 20;

/// A parsed Avro writer schema with its referenced schemata and a name table
/// for `Ref` lookups.
#[derive(Debug)]
pub struct AvroSchema {
    schema: Avro,
    references: Vec<Avro>,
    names: HashMap<String, Avro>,
}

impl AvroSchema {
    /// Parses the schema text; `references` are the named types it uses from
    /// other subjects (Confluent schema references), any order.
    pub fn parse(text: &str, references: &[Reference]) -> Result<Self, String> {
        // Process-wide, first caller wins (apache-avro keeps it in a OnceLock):
        // a poison message claiming a 1 TB string, or a billion-item array of
        // nulls (0 bytes each), must fail instead of allocating it.
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
        let text = with_connect_logical_types(text)?;
        let (schema, refs) = if references.is_empty() {
            (
                Avro::parse_str(&text).map_err(|e| e.to_string())?,
                Vec::new(),
            )
        } else {
            let refs = references
                .iter()
                .map(|r| with_connect_logical_types(&r.text).map(String::from))
                .collect::<Result<Vec<_>, _>>()?;
            Avro::parse_str_with_list(&text, refs.iter().map(String::as_str))
                .map_err(|e| e.to_string())?
        };
        let mut names = HashMap::new();
        for s in std::iter::once(&schema).chain(refs.iter()) {
            collect_names(s, &mut names);
        }
        Ok(AvroSchema {
            schema,
            references: refs,
            names,
        })
    }

    /// The writer schema itself.
    pub fn schema(&self) -> &Avro {
        &self.schema
    }

    /// Decodes one Avro binary datum (the body after the 5-byte header).
    pub fn decode(&self, body: &[u8]) -> Result<Value, String> {
        let builder = GenericDatumReader::builder(&self.schema);
        let reader = if self.references.is_empty() {
            builder.build()
        } else {
            builder
                .writer_schemata(self.references.iter().collect())
                .and_then(|b| b.build())
        }
        .map_err(|e| e.to_string())?;
        let mut cur = EofGuard {
            rest: body,
            hit_eof: false,
        };
        let value = reader.read_value(&mut cur).map_err(|e| e.to_string())?;
        // apache-avro turns end-of-data inside a boolean, string or union index
        // into a null (its container-file reader uses that), so a truncated
        // body would "decode": any read that ran past the end is an error.
        if cur.hit_eof {
            return Err("body truncated (ends inside a value)".into());
        }
        if !cur.rest.is_empty() {
            return Err(format!(
                "{} trailing bytes after the datum (written with another schema?)",
                cur.rest.len()
            ));
        }
        self.to_json(&value, &self.schema)
    }

    /// Encodes a value with this schema (no header): for tests and test
    /// producers. Frame it with [`super::wire::encode`].
    pub fn encode(&self, value: AvroValue) -> Result<Vec<u8>, String> {
        GenericDatumWriter::builder(&self.schema)
            .schemata(self.references.iter().collect())
            .and_then(|b| b.build())
            .and_then(|w| w.write_value_to_vec(value))
            .map_err(|e| e.to_string())
    }

    fn resolve<'a>(&'a self, schema: &'a Avro) -> Result<&'a Avro, String> {
        let mut s = schema;
        for _ in 0..64 {
            match s {
                Avro::Ref { name } => {
                    s = self
                        .names
                        .get(&name.fullname(None))
                        .ok_or_else(|| format!("unknown named type {}", name.fullname(None)))?;
                }
                other => return Ok(other),
            }
        }
        Err("reference chain too long".into())
    }

    fn to_json(&self, value: &AvroValue, schema: &Avro) -> Result<Value, String> {
        let schema = self.resolve(schema)?;
        Ok(match value {
            AvroValue::Null => Value::Null,
            AvroValue::Boolean(b) => Value::Bool(*b),
            AvroValue::Int(i) => Value::from(*i),
            AvroValue::Long(i) => Value::from(*i),
            AvroValue::Float(f) => float_json(*f),
            AvroValue::Double(f) => float_json(*f),
            AvroValue::Bytes(b) | AvroValue::Fixed(_, b) => bytea_hex(b),
            AvroValue::String(s) | AvroValue::Enum(_, s) => Value::String(s.clone()),
            AvroValue::Union(i, inner) => self.union_json(*i, inner, schema)?,
            AvroValue::Array(items) => self.array_json(items, schema)?,
            AvroValue::Map(m) => self.map_json(m, schema)?,
            AvroValue::Record(fields) => self.record_json(fields, schema)?,
            AvroValue::Decimal(d) => decimal_json(d, schema)?,
            AvroValue::BigDecimal(bd) => number(&bd.to_plain_string()),
            AvroValue::Uuid(u) => Value::String(u.hyphenated().to_string()),
            AvroValue::Date(days) => Value::String(date_text(*days)?),
            AvroValue::TimeMillis(ms) => Value::String(time_text(i64::from(*ms) * 1_000_000, 3)?),
            AvroValue::TimeMicros(us) => Value::String(time_text(us.saturating_mul(1000), 6)?),
            AvroValue::TimestampMillis(t) => Value::String(Unit::Millis.utc_text(*t)?),
            AvroValue::TimestampMicros(t) => Value::String(Unit::Micros.utc_text(*t)?),
            AvroValue::TimestampNanos(t) => Value::String(Unit::Nanos.utc_text(*t)?),
            AvroValue::LocalTimestampMillis(t) => Value::String(Unit::Millis.local_text(*t)?),
            AvroValue::LocalTimestampMicros(t) => Value::String(Unit::Micros.local_text(*t)?),
            AvroValue::LocalTimestampNanos(t) => Value::String(Unit::Nanos.local_text(*t)?),
            AvroValue::Duration(d) => Value::String(duration_text(d)),
        })
    }

    /// A union value is written unwrapped: the value of its branch.
    fn union_json(&self, branch: u32, inner: &AvroValue, schema: &Avro) -> Result<Value, String> {
        let branch_schema = match schema {
            Avro::Union(u) => u
                .variants()
                .get(branch as usize)
                .ok_or_else(|| format!("union branch {branch} out of range"))?,
            _ => schema,
        };
        self.to_json(inner, branch_schema)
    }

    fn array_json(&self, items: &[AvroValue], schema: &Avro) -> Result<Value, String> {
        let item_schema = match schema {
            Avro::Array(a) => &*a.items,
            _ => return Err("array value without an array schema".into()),
        };
        items
            .iter()
            .map(|v| self.to_json(v, item_schema))
            .collect::<Result<_, _>>()
            .map(Value::Array)
    }

    fn map_json(&self, m: &HashMap<String, AvroValue>, schema: &Avro) -> Result<Value, String> {
        let value_schema = match schema {
            Avro::Map(ms) => &*ms.types,
            _ => return Err("map value without a map schema".into()),
        };
        let mut out = Map::new();
        // Sorted so the JSON (and any non-canonical rendering) is stable.
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        for k in keys {
            out.insert(k.clone(), self.to_json(&m[k], value_schema)?);
        }
        Ok(Value::Object(out))
    }

    fn record_json(&self, fields: &[(String, AvroValue)], schema: &Avro) -> Result<Value, String> {
        let rec = match schema {
            Avro::Record(r) => r,
            _ => return Err("record value without a record schema".into()),
        };
        let mut out = Map::new();
        for (i, (name, v)) in fields.iter().enumerate() {
            // Values come in schema order: the lookup is only a fallback.
            let field = match rec.fields.get(i) {
                Some(f) if &f.name == name => f,
                _ => rec
                    .lookup
                    .get(name)
                    .and_then(|&j| rec.fields.get(j))
                    .ok_or_else(|| format!("field {name} not in record {}", rec.name))?,
            };
            out.insert(name.clone(), self.to_json(v, &field.schema)?);
        }
        Ok(Value::Object(out))
    }
}

/// Kafka Connect and Debezium annotate temporal types with `connect.name`
/// instead of (or beside) an Avro logical type: `{"type": "long",
/// "connect.name": "io.debezium.time.MicroTimestamp"}` is a count of
/// microseconds. Each annotation maps to the logical type with that meaning,
/// so the value decodes to the text a timestamp (date, time, uuid) column
/// takes. A logical type already present wins. Connect `Decimal`s carry
/// `logicalType: decimal` from the converter and need nothing.
const CONNECT_LOGICAL_TYPES: &[(&str, &str, &str)] = &[
    // (connect.name, Avro base type, logical type)
    ("io.debezium.time.Date", "int", "date"),
    ("io.debezium.time.Time", "int", "time-millis"),
    ("io.debezium.time.MicroTime", "long", "time-micros"),
    // Debezium's timestamps of `timestamp without time zone` columns: a
    // count since the epoch of the local date-time, no zone.
    (
        "io.debezium.time.Timestamp",
        "long",
        "local-timestamp-millis",
    ),
    (
        "io.debezium.time.MicroTimestamp",
        "long",
        "local-timestamp-micros",
    ),
    (
        "io.debezium.time.NanoTimestamp",
        "long",
        "local-timestamp-nanos",
    ),
    ("io.debezium.data.Uuid", "string", "uuid"),
    ("org.apache.kafka.connect.data.Date", "int", "date"),
    ("org.apache.kafka.connect.data.Time", "int", "time-millis"),
    // Connect's Timestamp is an instant (java.util.Date).
    (
        "org.apache.kafka.connect.data.Timestamp",
        "long",
        "timestamp-millis",
    ),
];

/// The schema text with [`CONNECT_LOGICAL_TYPES`] applied (borrowed when it
/// has no `connect.name`).
fn with_connect_logical_types(text: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    fn annotate(v: &mut Value) {
        match v {
            Value::Object(m) => {
                let logical = match (m.get("connect.name"), m.get("type")) {
                    (Some(Value::String(name)), Some(Value::String(base)))
                        if !m.contains_key("logicalType") =>
                    {
                        CONNECT_LOGICAL_TYPES
                            .iter()
                            .find(|(n, b, _)| n == name && b == base)
                            .map(|(_, _, l)| *l)
                    }
                    _ => None,
                };
                if let Some(l) = logical {
                    m.insert("logicalType".into(), Value::String(l.into()));
                }
                m.values_mut().for_each(annotate);
            }
            Value::Array(items) => items.iter_mut().for_each(annotate),
            _ => {}
        }
    }
    if !text.contains("connect.name") {
        return Ok(text.into());
    }
    let mut v: Value =
        serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
    annotate(&mut v);
    Ok(v.to_string().into())
}

/// A decimal needs its scale from the schema; the digits never pass through
/// a float.
fn decimal_json(d: &apache_avro::Decimal, schema: &Avro) -> Result<Value, String> {
    let scale = match schema {
        Avro::Decimal(ds) => ds.scale,
        _ => return Err("decimal value without a decimal schema".into()),
    };
    Ok(number(&decimal_text(&BigInt::from(d.clone()), scale)))
}

/// A byte-slice reader that remembers whether anyone asked for more bytes
/// than were left. A valid datum is read exactly to its end and never past it.
struct EofGuard<'a> {
    rest: &'a [u8],
    hit_eof: bool,
}

impl std::io::Read for EofGuard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.len() > self.rest.len() {
            self.hit_eof = true;
        }
        let n = buf.len().min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

fn collect_names(schema: &Avro, names: &mut HashMap<String, Avro>) {
    fn add(names: &mut HashMap<String, Avro>, name: &Name, s: &Avro) {
        names
            .entry(name.fullname(None))
            .or_insert_with(|| s.clone());
    }
    match schema {
        Avro::Record(r) => {
            add(names, &r.name, schema);
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Avro::Enum(e) => add(names, &e.name, schema),
        Avro::Fixed(f) => add(names, &f.name, schema),
        Avro::Decimal(d) => {
            if let InnerDecimalSchema::Fixed(f) = &d.inner {
                add(names, &f.name, schema)
            }
        }
        Avro::Uuid(UuidSchema::Fixed(f)) | Avro::Duration(f) => add(names, &f.name, schema),
        Avro::Array(a) => collect_names(&a.items, names),
        Avro::Map(m) => collect_names(&m.types, names),
        Avro::Union(u) => {
            for v in u.variants() {
                collect_names(v, names);
            }
        }
        _ => {}
    }
}

/// The unscaled integer with the decimal point `scale` digits from the right.
fn decimal_text(unscaled: &BigInt, scale: usize) -> String {
    let digits = unscaled.magnitude().to_str_radix(10);
    let sign = if unscaled.sign() == num_bigint::Sign::Minus {
        "-"
    } else {
        ""
    };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = if digits.len() <= scale {
        format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

fn date_text(days: i32) -> Result<String, String> {
    if let Some(infinity) = connect::date_infinity(i64::from(days)) {
        return Ok(infinity.into());
    }
    NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|epoch| epoch.checked_add_signed(chrono::TimeDelta::days(i64::from(days))))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .ok_or_else(|| format!("date {days} days from the epoch is out of range"))
}

fn time_text(nanos: i64, digits: usize) -> Result<String, String> {
    // The end of the day, which Postgres's time takes.
    if nanos == 86_400_000_000_000 {
        return Ok("24:00:00".into());
    }
    if !(0..86_400_000_000_000).contains(&nanos) {
        return Err(format!("time of day {nanos} ns is outside 00:00..24:00"));
    }
    let t = NaiveTime::from_num_seconds_from_midnight_opt(
        (nanos / 1_000_000_000) as u32,
        (nanos % 1_000_000_000) as u32,
    )
    .ok_or("time of day out of range")?;
    Ok(t.format(if digits == 3 {
        "%H:%M:%S%.3f"
    } else {
        "%H:%M:%S%.6f"
    })
    .to_string())
}

/// The resolution of a timestamp logical type: the unit of its count since
/// the epoch, and how many fraction digits its text gets.
#[derive(Clone, Copy)]
enum Unit {
    Millis,
    Micros,
    Nanos,
}

impl Unit {
    /// `±infinity` of a Postgres source, as PgJDBC encodes them.
    fn infinity(self, count: i64) -> Option<&'static str> {
        let micros = match self {
            Unit::Millis => count.checked_mul(1_000)?,
            Unit::Micros => count,
            Unit::Nanos => return None,
        };
        connect::timestamp_infinity(micros, 1)
    }

    fn datetime(self, count: i64) -> Option<DateTime<chrono::Utc>> {
        match self {
            Unit::Millis => DateTime::from_timestamp_millis(count),
            Unit::Micros => DateTime::from_timestamp_micros(count),
            Unit::Nanos => Some(DateTime::from_timestamp_nanos(count)),
        }
    }

    /// RFC 3339 in UTC with `Z` (`timestamp-*`).
    fn utc_text(self, count: i64) -> Result<String, String> {
        let digits = match self {
            Unit::Millis => SecondsFormat::Millis,
            Unit::Micros => SecondsFormat::Micros,
            Unit::Nanos => SecondsFormat::Nanos,
        };
        if let Some(infinity) = self.infinity(count) {
            return Ok(infinity.into());
        }
        self.datetime(count)
            .map(|t| t.to_rfc3339_opts(digits, true))
            .ok_or_else(|| "timestamp out of range".to_string())
    }

    /// The same without a zone (`local-timestamp-*`).
    fn local_text(self, count: i64) -> Result<String, String> {
        let digits = match self {
            Unit::Millis => "%.3f",
            Unit::Micros => "%.6f",
            Unit::Nanos => "%.9f",
        };
        if let Some(infinity) = self.infinity(count) {
            return Ok(infinity.into());
        }
        self.datetime(count)
            .map(|t| {
                t.naive_utc()
                    .format(&format!("%Y-%m-%dT%H:%M:%S{digits}"))
                    .to_string()
            })
            .ok_or_else(|| "local timestamp out of range".to_string())
    }
}

/// ISO 8601 with all three parts always written, which Postgres' interval
/// input reads: `P1M2DT3.004S`.
fn duration_text(d: &apache_avro::Duration) -> String {
    let months = u32::from(d.months());
    let days = u32::from(d.days());
    let ms = u32::from(d.millis());
    format!("P{months}M{days}DT{}.{:03}S", ms / 1000, ms % 1000)
}

/// Columns for a typed table following an Avro record schema (rules in the
/// module doc).
pub fn columns_from_avro(schema: &AvroSchema) -> Vec<ColumnSpec> {
    let root = match schema.resolve(&schema.schema) {
        Ok(Avro::Record(r)) => r,
        _ => {
            let pg_type = pg_type(schema, &schema.schema).map(|(t, _)| t);
            return vec![whole_value_column(
                pg_type.unwrap_or_else(|| "jsonb".into()),
            )];
        }
    };
    let mut cols = Flattened::default();
    let mut stack = HashSet::from([root.name.fullname(None)]);
    flatten(schema, root, &Parent::default(), &mut stack, &mut cols);
    cols.into_columns()
}

/// Adds the columns of `rec`'s fields; a field that is a record (possibly in
/// a nullable union) is flattened in turn unless that record type is already
/// on `stack` (a recursive type: one `jsonb` column).
fn flatten(
    schema: &AvroSchema,
    rec: &RecordSchema,
    parent: &Parent,
    stack: &mut HashSet<String>,
    out: &mut Flattened,
) {
    for field in &rec.fields {
        let member = parent.member(&field.name);
        let (inner, nullable) = unwrap_nullable(schema, &field.schema);
        let child = inner
            .and_then(|s| schema.resolve(s).ok())
            .and_then(|s| match s {
                Avro::Record(r) => Some(r),
                _ => None,
            });
        if let Some(child) = child {
            let full = child.name.fullname(None);
            if stack.insert(full.clone()) {
                let nested = parent.nested(&member, parent.nullable || nullable);
                flatten(schema, child, &nested, stack, out);
                stack.remove(&full);
                continue;
            }
        }
        let (pg, null_from_type) = pg_type(schema, &field.schema).unwrap_or(("jsonb".into(), true));
        out.push(
            parent,
            member,
            pg,
            parent.nullable || nullable || null_from_type,
        );
    }
}

/// For `["null", T]` (either order) returns (Some(T), true); for a plain type
/// (Some(type), false); for other unions (None, has_null).
fn unwrap_nullable<'a>(schema: &'a AvroSchema, s: &'a Avro) -> (Option<&'a Avro>, bool) {
    match schema.resolve(s) {
        Ok(Avro::Union(u)) => only_non_null(u.variants(), |v| matches!(v, Avro::Null)),
        Ok(other) => (Some(other), false),
        Err(_) => (None, true),
    }
}

/// Postgres type of an Avro type and whether the type itself admits null.
/// `None` for types without a sensible column type (null alone).
fn pg_type(schema: &AvroSchema, s: &Avro) -> Option<(String, bool)> {
    let (inner, nullable) = unwrap_nullable(schema, s);
    let Some(inner) = inner else {
        return Some(("jsonb".into(), nullable));
    };
    let inner = schema.resolve(inner).ok()?;
    let t = match inner {
        Avro::Null => return None,
        Avro::Boolean => "boolean".into(),
        Avro::Int => "integer".into(),
        Avro::Long => "bigint".into(),
        Avro::Float => "real".into(),
        Avro::Double => "double precision".into(),
        Avro::Bytes | Avro::Fixed(_) => "bytea".into(),
        Avro::String | Avro::Enum(_) => "text".into(),
        Avro::Decimal(d) => format!("numeric({},{})", d.precision, d.scale),
        Avro::BigDecimal => "numeric".into(),
        Avro::Uuid(_) => "uuid".into(),
        Avro::Date => "date".into(),
        Avro::TimeMillis => "time(3)".into(),
        Avro::TimeMicros => "time(6)".into(),
        Avro::TimestampMillis => "timestamp(3) with time zone".into(),
        Avro::TimestampMicros | Avro::TimestampNanos => "timestamp with time zone".into(),
        Avro::LocalTimestampMillis => "timestamp(3) without time zone".into(),
        Avro::LocalTimestampMicros | Avro::LocalTimestampNanos => {
            "timestamp without time zone".into()
        }
        Avro::Duration(_) => "interval".into(),
        Avro::Map(_) | Avro::Record(_) | Avro::Union(_) | Avro::Ref { .. } => "jsonb".into(),
        Avro::Array(a) => match pg_type(schema, &a.items) {
            Some((t, _)) if t != "jsonb" && !t.ends_with("[]") => format!("{t}[]"),
            _ => "jsonb".into(),
        },
    };
    Some((t, nullable))
}

#[cfg(test)]
mod tests {
    use super::super::tests::column_rows;
    use super::super::{decode, hash_view, wire, DecodeError, Format, Schema, SchemaType};
    use super::*;
    use apache_avro::types::Value as V;
    use serde_json::json;

    fn schema(id: u32, text: &str) -> Schema {
        Schema::parse(id, SchemaType::Avro, text, &[]).unwrap()
    }

    /// Frames `body` with `s`'s id and decodes it with `s`.
    fn decode_body(s: &Schema, body: &[u8]) -> Result<Value, DecodeError> {
        decode(Format::Avro, &wire::encode(s.id(), body), s)
    }

    fn roundtrip(s: &Schema, v: V) -> Value {
        decode_body(s, &s.as_avro().unwrap().encode(v).unwrap()).unwrap()
    }

    const ORDER: &str = r#"{
      "type": "record", "name": "Order", "namespace": "shop",
      "fields": [
        {"name": "id", "type": "long"},
        {"name": "ok", "type": "boolean"},
        {"name": "qty", "type": "int"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "name", "type": "string"},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "raw", "type": "bytes"},
        {"name": "tag", "type": {"type": "fixed", "name": "Tag", "size": 2}},
        {"name": "note", "type": ["null", "string"], "default": null},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "price", "type": {"type": "fixed", "name": "Price", "size": 8, "logicalType": "decimal", "precision": 18, "scale": 4}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "tu", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tsu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "lts", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "ltsu", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "dur", "type": {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
            {"name": "cid", "type": "long"},
            {"name": "address", "type": ["null", {"type": "record", "name": "Address", "fields": [
                {"name": "city", "type": "string"}]}], "default": null}
        ]}},
        {"name": "billing", "type": ["null", "Address"], "default": null},
        {"name": "either", "type": ["null", "long", "string"], "default": null}
      ]}"#;

    /// A record of [`ORDER`]: every field, in declaration order.
    fn order_value(note: Option<&str>, either: V) -> V {
        let mut fields = primitive_fields(note);
        fields.extend(logical_fields());
        fields.extend(container_fields(either));
        V::Record(fields)
    }

    /// `id` … `note`: primitives, enum, bytes, fixed and a nullable string.
    fn primitive_fields(note: Option<&str>) -> Vec<(String, V)> {
        vec![
            ("id".into(), V::Long(9_007_199_254_740_993)), // 2^53 + 1: must stay exact
            ("ok".into(), V::Boolean(true)),
            ("qty".into(), V::Int(-3)),
            ("f".into(), V::Float(0.1)),
            ("d".into(), V::Double(f64::NAN)),
            ("name".into(), V::String("Zoë".into())),
            ("status".into(), V::Enum(1, "PAID".into())),
            ("raw".into(), V::Bytes(vec![0, 0xab, 0xff])),
            ("tag".into(), V::Fixed(2, vec![1, 2])),
            (
                "note".into(),
                match note {
                    Some(n) => V::Union(1, Box::new(V::String(n.into()))),
                    None => V::Union(0, Box::new(V::Null)),
                },
            ),
        ]
    }

    /// `amount` … `dur`: the logical types.
    fn logical_fields() -> Vec<(String, V)> {
        let ts_ms = 1_714_979_289_123i64; // 2024-05-06T07:08:09.123Z
        vec![
            // 1234567 with scale 2 = 12345.67
            (
                "amount".into(),
                V::Decimal(apache_avro::Decimal::from(
                    BigInt::from(1_234_567).to_signed_bytes_be(),
                )),
            ),
            // -5 with scale 4 in a fixed(8) = -0.0005
            (
                "price".into(),
                V::Decimal(apache_avro::Decimal::from([
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb,
                ])),
            ),
            (
                "uid".into(),
                V::Uuid("6F9619FF-8B86-D011-B42D-00C04FC964FF".parse().unwrap()),
            ),
            ("day".into(), V::Date(19_849)),          // 2024-05-06
            ("tm".into(), V::TimeMillis(25_689_123)), // 07:08:09.123
            ("tu".into(), V::TimeMicros(25_689_123_456)),
            ("ts".into(), V::TimestampMillis(ts_ms)),
            ("tsu".into(), V::TimestampMicros(ts_ms * 1000 + 456)),
            ("lts".into(), V::LocalTimestampMillis(ts_ms)),
            ("ltsu".into(), V::LocalTimestampMicros(-1)),
            (
                "dur".into(),
                V::Duration(apache_avro::Duration::new(
                    apache_avro::Months::new(1),
                    apache_avro::Days::new(2),
                    apache_avro::Millis::new(3004),
                )),
            ),
        ]
    }

    /// `tags` … `either`: array, map, nested and nullable records, a
    /// multi-branch union.
    fn container_fields(either: V) -> Vec<(String, V)> {
        vec![
            (
                "tags".into(),
                V::Array(vec![V::String("a".into()), V::String("b".into())]),
            ),
            (
                "attrs".into(),
                V::Map(HashMap::from([
                    ("z".into(), V::Long(1)),
                    ("a".into(), V::Long(2)),
                ])),
            ),
            (
                "customer".into(),
                V::Record(vec![
                    ("cid".into(), V::Long(7)),
                    (
                        "address".into(),
                        V::Union(
                            1,
                            Box::new(V::Record(vec![("city".into(), V::String("Oslo".into()))])),
                        ),
                    ),
                ]),
            ),
            ("billing".into(), V::Union(0, Box::new(V::Null))),
            ("either".into(), either),
        ]
    }

    /// A Debezium `after` record as Connect's Avro converter writes it:
    /// temporal types only named by `connect.name`. The bytes are what the
    /// connector sends (plain ints and longs); the decoded values are the
    /// text the matching columns take.
    #[test]
    fn connect_and_debezium_temporal_names_decode_as_logical_types() {
        const FIELDS: &str = r#"[
          {"name": "id", "type": "int"},
          {"name": "created", "type": ["null", {"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.MicroTimestamp"}], "default": null},
          {"name": "day", "type": {"type": "int", "connect.version": 1, "connect.name": "io.debezium.time.Date"}},
          {"name": "at", "type": {"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"}},
          {"name": "t", "type": {"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.MicroTime"}},
          {"name": "ms", "type": {"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.Timestamp"}},
          {"name": "inst", "type": {"type": "long", "connect.version": 1, "connect.name": "org.apache.kafka.connect.data.Timestamp", "logicalType": "timestamp-millis"}},
          {"name": "uid", "type": {"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Uuid"}},
          {"name": "odd", "type": {"type": "long", "connect.name": "io.debezium.time.Date"}}
        ]"#;
        let annotated = schema(
            3,
            &format!(
                r#"{{"type": "record", "name": "Value", "namespace": "db.public.items", "fields": {FIELDS}}}"#
            ),
        );
        // The same record without the annotations: what the bytes are.
        let plain: Value = serde_json::from_str(&FIELDS.replace("connect.name", "x")).unwrap();
        let plain = AvroSchema::parse(
            &json!({"type": "record", "name": "Value", "fields": plain}).to_string(),
            &[],
        )
        .unwrap();
        let ms = 1_714_979_289_123_i64; // 2024-05-06T07:08:09.123
        let body = plain
            .encode(V::Record(vec![
                ("id".into(), V::Int(1)),
                (
                    "created".into(),
                    V::Union(1, Box::new(V::Long(ms * 1000 + 456))),
                ),
                ("day".into(), V::Int(19_849)),
                ("at".into(), V::String("2024-05-06T07:08:09.123456Z".into())),
                ("t".into(), V::Long(25_689_123_456)),
                ("ms".into(), V::Long(ms)),
                ("inst".into(), V::Long(ms)),
                (
                    "uid".into(),
                    V::String("6f9619ff-8b86-d011-b42d-00c04fc964ff".into()),
                ),
                ("odd".into(), V::Long(5)),
            ]))
            .unwrap();
        assert_eq!(
            decode_body(&annotated, &body).unwrap(),
            json!({
                "id": 1,
                "created": "2024-05-06T07:08:09.123456",
                "day": "2024-05-06",
                "at": "2024-05-06T07:08:09.123456Z",
                "t": "07:08:09.123456",
                "ms": "2024-05-06T07:08:09.123",
                "inst": "2024-05-06T07:08:09.123Z",
                "uid": "6f9619ff-8b86-d011-b42d-00c04fc964ff",
                "odd": 5
            })
        );
        // Columns created from such a schema get the temporal types.
        let cols: HashMap<String, String> = columns_from_avro(annotated.as_avro().unwrap())
            .into_iter()
            .map(|c| (c.name, c.pg_type))
            .collect();
        assert_eq!(cols["created"], "timestamp without time zone");
        assert_eq!(cols["day"], "date");
        assert_eq!(cols["t"], "time(6)");
        assert_eq!(cols["uid"], "uuid");
        assert_eq!(cols["odd"], "bigint");
    }

    #[test]
    fn every_type_maps_as_documented() {
        let s = schema(1, ORDER);
        let got = roundtrip(
            &s,
            order_value(Some("hi"), V::Union(2, Box::new(V::String("s".into())))),
        );
        let want = json!({
            "id": 9_007_199_254_740_993u64, "ok": true, "qty": -3, "f": 0.1, "d": "NaN",
            "name": "Zoë", "status": "PAID", "raw": "\\x00abff", "tag": "\\x0102", "note": "hi",
            "amount": 12345.67, "price": -0.0005,
            "uid": "6f9619ff-8b86-d011-b42d-00c04fc964ff",
            "day": "2024-05-06", "tm": "07:08:09.123", "tu": "07:08:09.123456",
            "ts": "2024-05-06T07:08:09.123Z", "tsu": "2024-05-06T07:08:09.123456Z",
            "lts": "2024-05-06T07:08:09.123", "ltsu": "1969-12-31T23:59:59.999999",
            "dur": "P1M2DT3.004S",
            "tags": ["a", "b"], "attrs": {"a": 2, "z": 1},
            "customer": {"cid": 7, "address": {"city": "Oslo"}},
            "billing": null, "either": "s"
        });
        assert_eq!(got, want);
        // Exact digits, no float rounding: the number text is kept as written.
        assert_eq!(got["amount"].to_string(), "12345.67");
        assert_eq!(got["price"].to_string(), "-0.0005");
        assert_eq!(got["id"].to_string(), "9007199254740993");
    }

    #[test]
    fn decimal_text_rules() {
        for (unscaled, scale, want) in [
            (1_234_567i64, 2, "12345.67"),
            (-5, 2, "-0.05"),
            (150, 2, "1.50"),
            (0, 2, "0.00"),
            (0, 0, "0"),
            (-42, 0, "-42"),
            (7, 5, "0.00007"),
        ] {
            assert_eq!(decimal_text(&BigInt::from(unscaled), scale), want);
        }
        let big: BigInt = "123456789012345678901234567890123456".parse().unwrap();
        assert_eq!(
            decimal_text(&big, 18),
            "123456789012345678.901234567890123456"
        );
    }

    #[test]
    fn floats_and_infinities() {
        let s = schema(
            2,
            r#"{"type":"record","name":"F","fields":[{"name":"a","type":"float"},{"name":"b","type":"double"}]}"#,
        );
        for (a, b, ja, jb) in [
            (
                f32::INFINITY,
                f64::NEG_INFINITY,
                json!("Infinity"),
                json!("-Infinity"),
            ),
            (1.5f32, 1e21f64, json!(1.5), number("1e+21")),
            // -0 keeps its sign (Postgres's float does).
            (-0.0f32, 2.0f64, number("-0.0"), json!(2)),
        ] {
            let v = roundtrip(
                &s,
                V::Record(vec![("a".into(), V::Float(a)), ("b".into(), V::Double(b))]),
            );
            assert_eq!(v, json!({"a": ja, "b": jb}));
        }
    }

    #[test]
    fn top_level_unions_and_primitives() {
        let s = schema(3, r#"["null","string"]"#);
        assert_eq!(roundtrip(&s, V::Union(0, Box::new(V::Null))), Value::Null);
        assert_eq!(
            roundtrip(&s, V::Union(1, Box::new(V::String("x".into())))),
            json!("x")
        );
        let s = schema(4, r#""long""#);
        assert_eq!(roundtrip(&s, V::Long(-1)), json!(-1));
    }

    #[test]
    fn poison_bodies() {
        let s = schema(
            5,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#,
        );
        let e = |body: &[u8]| decode_body(&s, body).unwrap_err();
        // Truncated: string length 10, no bytes (apache-avro alone says null).
        let err = e(&[2, 20]);
        assert!(err.to_string().contains("truncated"), "{err}");
        assert_eq!(err.reason(), "undecodable");
        assert_eq!(err.schema_id(), Some(5));
        assert!(err.to_string().contains("schema 5"), "{err}");
        // A length far beyond the body: an error, not a huge allocation.
        let err = e(&[2, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        assert_eq!(err.reason(), "undecodable");
        let arr = schema(17, r#"{"type":"array","items":"null"}"#);
        let err = decode_body(&arr, &[0x80, 0x80, 0x80, 0x80, 0x10, 0]).unwrap_err();
        assert_eq!(err.reason(), "undecodable", "{err}");
        // Trailing bytes.
        assert!(e(&[2, 2, b'x', 0, 0]).to_string().contains("trailing"));
        // Empty body.
        assert_eq!(e(&[]).reason(), "undecodable");
        // No magic byte: JSON text sent to an Avro route.
        let err = decode(Format::Avro, br#"{"a":1}"#, &s).unwrap_err();
        assert_eq!(err.reason(), "no_magic_byte");
        // Truncated inside a union index / a boolean: also null in apache-avro alone.
        let n = schema(
            16,
            r#"{"type":"record","name":"N","fields":[{"name":"a","type":"long"},{"name":"n","type":["null","string"]},{"name":"b","type":"boolean"}]}"#,
        );
        for body in [&[2][..], &[2, 0]] {
            let err = decode_body(&n, body).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{body:?}: {err}");
        }
        assert_eq!(
            decode_body(&n, &[2, 0, 1]).unwrap(),
            json!({"a": 1, "n": null, "b": true})
        );
        // Out-of-range union branch index.
        let u = schema(6, r#"["null","long"]"#);
        assert!(decode_body(&u, &[8]).is_err());
        // A time-of-day beyond 24h is refused, not wrapped; 24:00 itself is
        // Postgres's end of the day.
        let t = schema(7, r#"{"type":"int","logicalType":"time-millis"}"#);
        let encode = |ms| t.as_avro().unwrap().encode(V::TimeMillis(ms)).unwrap();
        assert!(decode_body(&t, &encode(86_400_001)).is_err());
        assert_eq!(
            decode_body(&t, &encode(86_400_000)).unwrap(),
            json!("24:00:00")
        );
    }

    #[test]
    fn named_references() {
        let money = r#"{"type":"record","name":"Money","namespace":"x","fields":[{"name":"units","type":"long"},{"name":"cur","type":"string"}]}"#;
        let order = r#"{"type":"record","name":"Order","namespace":"x","fields":[{"name":"price","type":"x.Money"},{"name":"old","type":["null","Money"],"default":null}]}"#;
        let s = Schema::parse(
            8,
            SchemaType::Avro,
            order,
            &[Reference {
                name: "x.Money".into(),
                text: money.into(),
            }],
        )
        .unwrap();
        let m = |u| {
            V::Record(vec![
                ("units".into(), V::Long(u)),
                ("cur".into(), V::String("EUR".into())),
            ])
        };
        let v = roundtrip(
            &s,
            V::Record(vec![
                ("price".into(), m(5)),
                ("old".into(), V::Union(1, Box::new(m(4)))),
            ]),
        );
        assert_eq!(
            v,
            json!({"price": {"units": 5, "cur": "EUR"}, "old": {"units": 4, "cur": "EUR"}})
        );
        let cols = columns_from_avro(s.as_avro().unwrap());
        let names: Vec<_> = cols.iter().map(|c| (c.name.as_str(), c.nullable)).collect();
        assert_eq!(
            names,
            [
                ("price_units", false),
                ("price_cur", false),
                ("old_units", true),
                ("old_cur", true)
            ]
        );
        // Missing reference: a schema error, not a panic.
        assert!(Schema::parse(9, SchemaType::Avro, order, &[]).is_err());
    }

    /// The same logical record under two ids: same text under another subject
    /// (decodes identically), and v2 = v1 + optional field.
    #[test]
    fn same_record_under_two_ids_hashes_alike() {
        let v1 = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"long"},{"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}}]}"#;
        // Same record, documented and reordered differently: still the same decoded value.
        let v1b = r#"{"type":"record","name":"E","doc":"copy","fields":[{"name":"id","type":"long","doc":"key"},{"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}}]}"#;
        let v2 = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"long"},{"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},{"name":"note","type":["null","string"],"default":null}]}"#;
        // id 1, amount 123.45 (unscaled 0x3039), then the fields only v2 has.
        let event = |v2_fields: Vec<(String, V)>| {
            let mut fields = vec![
                ("id".into(), V::Long(1)),
                (
                    "amount".into(),
                    V::Decimal(apache_avro::Decimal::from(&[0x30, 0x39][..])),
                ),
            ];
            fields.extend(v2_fields);
            V::Record(fields)
        };
        let a = roundtrip(&schema(10, v1), event(vec![]));
        let b = roundtrip(&schema(11, v1b), event(vec![]));
        let c = roundtrip(
            &schema(12, v2),
            event(vec![("note".into(), V::Union(0, Box::new(V::Null)))]),
        );
        let d = roundtrip(
            &schema(12, v2),
            event(vec![(
                "note".into(),
                V::Union(1, Box::new(V::String("x".into()))),
            )]),
        );
        assert_eq!(a, json!({"id": 1, "amount": 123.45}));
        assert_eq!(
            crate::json::hash::hash_value(&a),
            crate::json::hash::hash_value(&b)
        );
        // v2 with the new field null: different decoded value, same hash view.
        assert_ne!(a, c);
        assert_eq!(
            crate::json::hash::hash_value(&hash_view(&a)),
            crate::json::hash::hash_value(&hash_view(&c))
        );
        // v2 with the new field set: a different event.
        assert_ne!(
            crate::json::hash::hash_value(&hash_view(&a)),
            crate::json::hash::hash_value(&hash_view(&d))
        );
    }

    #[test]
    fn columns_follow_the_schema() {
        let s = schema(13, ORDER);
        let cols = columns_from_avro(s.as_avro().unwrap());
        assert_eq!(
            column_rows(&cols),
            [
                ("id", "bigint", "/id", false),
                ("ok", "boolean", "/ok", false),
                ("qty", "integer", "/qty", false),
                ("f", "real", "/f", false),
                ("d", "double precision", "/d", false),
                ("name", "text", "/name", false),
                ("status", "text", "/status", false),
                ("raw", "bytea", "/raw", false),
                ("tag", "bytea", "/tag", false),
                ("note", "text", "/note", true),
                ("amount", "numeric(10,2)", "/amount", false),
                ("price", "numeric(18,4)", "/price", false),
                ("uid", "uuid", "/uid", false),
                ("day", "date", "/day", false),
                ("tm", "time(3)", "/tm", false),
                ("tu", "time(6)", "/tu", false),
                ("ts", "timestamp(3) with time zone", "/ts", false),
                ("tsu", "timestamp with time zone", "/tsu", false),
                ("lts", "timestamp(3) without time zone", "/lts", false),
                ("ltsu", "timestamp without time zone", "/ltsu", false),
                ("dur", "interval", "/dur", false),
                ("tags", "text[]", "/tags", false),
                ("attrs", "jsonb", "/attrs", false),
                ("customer_cid", "bigint", "/customer/cid", false),
                (
                    "customer_address_city",
                    "text",
                    "/customer/address/city",
                    true
                ),
                ("billing_city", "text", "/billing/city", true),
                ("either", "jsonb", "/either", true),
            ]
        );
    }

    #[test]
    fn column_collisions_and_recursion() {
        let s = schema(
            14,
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":{"type":"record","name":"A","fields":[{"name":"b","type":"int"}]}},
                {"name":"a_b","type":"string"},
                {"name":"node","type":{"type":"record","name":"Node","fields":[
                    {"name":"v","type":"int"},
                    {"name":"next","type":["null","Node"],"default":null},
                    {"name":"kids","type":{"type":"array","items":"Node"}}]}}
            ]}"#,
        );
        let cols = columns_from_avro(s.as_avro().unwrap());
        let got: Vec<(&str, &str, &str)> = cols
            .iter()
            .map(|c| (c.name.as_str(), c.pg_type.as_str(), c.pointer.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("a_b_2", "integer", "/a/b"), // the shallower top-level a_b keeps the name
                ("a_b", "text", "/a_b"),
                ("node_v", "integer", "/node/v"),
                ("node_next", "jsonb", "/node/next"), // recursive: not flattened
                ("node_kids", "jsonb", "/node/kids"),
            ]
        );
        // A non-record root: one column with the whole value.
        let p = schema(15, r#""string""#);
        assert_eq!(
            columns_from_avro(p.as_avro().unwrap()),
            [ColumnSpec {
                name: "value".into(),
                pg_type: "text".into(),
                pointer: String::new(),
                nullable: true
            }]
        );
    }
}

/// The published Avro hash vectors (docs/hash-vectors-avro.json): each datum
/// decodes, with its writer schema, to the canonical form and hash given.
#[cfg(test)]
mod hash_vectors {
    use crate::format::{self, Schema, SchemaType};
    use crate::json::hash;

    #[test]
    fn published_avro_vectors_hold() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/hash-vectors-avro.json");
        let vectors: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(vectors.len() >= 4);
        for v in vectors {
            let name = v["name"].as_str().unwrap();
            let schema =
                Schema::parse(1, SchemaType::Avro, v["schema"].as_str().unwrap(), &[]).unwrap();
            let body = hex::decode(v["datum_hex"].as_str().unwrap()).unwrap();
            let msg = format::wire::encode(1, &body);
            let view =
                format::hash_view(&format::decode(format::Format::Avro, &msg, &schema).unwrap());
            assert_eq!(hash::canonical_string(&view), v["canonical"], "{name}");
            assert_eq!(hash::hash_value(&view).to_string(), v["sha256"], "{name}");
        }
    }
}
