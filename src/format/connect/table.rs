//! The Postgres table a capture needs: each field's column type, from the
//! source column type Debezium propagated (read per source family: the
//! same name means different things in Postgres and MySQL), the logical
//! type, the primitive type.

use serde_json::Value;

use super::value::POINT;
use super::{convert, mysql, ConnectSchema, Kind, SOURCE_LENGTH, SOURCE_SCALE, SOURCE_TYPE};

/// The database a capture reads. The column types Debezium propagates are
/// the source's names, which mean different things per family (`TIMESTAMP`
/// has no time zone in Postgres and is an instant in MySQL; a MySQL `TIME`
/// spans ±838 hours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFamily {
    Postgres,
    MySql,
    /// Another connector: logical and primitive types only.
    Other,
}

impl SourceFamily {
    /// By the name of a Debezium envelope's `source` struct (a value
    /// schema without one, e.g. a hand-made capture, reads as Postgres).
    pub fn of_envelope(value: &ConnectSchema) -> SourceFamily {
        match value.field("source").and_then(|s| s.name.as_deref()) {
            None | Some("io.debezium.connector.postgresql.Source") => SourceFamily::Postgres,
            Some("io.debezium.connector.mysql.Source" | "io.debezium.connector.mariadb.Source") => {
                SourceFamily::MySql
            }
            Some(_) => SourceFamily::Other,
        }
    }
}

/// The Postgres type of a column holding values of `schema`, or why there
/// is none the sink can fill exactly.
pub fn pg_type(schema: &ConnectSchema) -> Result<String, String> {
    pg_type_in(schema, SourceFamily::Postgres)
}

/// [`pg_type`] for a capture of `family`.
fn pg_type_in(schema: &ConnectSchema, family: SourceFamily) -> Result<String, String> {
    let by_source = match family {
        SourceFamily::Postgres => source_pg_type(schema),
        SourceFamily::MySql => {
            mysql::source_pg_type(schema).or_else(|| mysql::logical_pg_type(schema))
        }
        SourceFamily::Other => None,
    };
    if let Some(t) = by_source {
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
            format!("{}[]", pg_type_in(&item, family)?)
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
    let family = SourceFamily::of_envelope(value);
    let mut columns = Vec::with_capacity(fields.len());
    for f in fields {
        if f.name.len() > 63 {
            return Err(format!(
                "column `{}` is longer than Postgres's 63-byte identifiers",
                f.name
            ));
        }
        let pg_type =
            pg_type_in(&f.schema, family).map_err(|e| format!("column `{}`: {e}", f.name))?;
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
