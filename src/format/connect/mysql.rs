//! MySQL and MariaDB columns as the Debezium MySQL connector propagates them
//! (`column.propagate.source.type`): the type name, `length` (a decimal's
//! precision, a string's characters, a temporal type's fractional digits)
//! and `scale`. Observed encodings: tests/cdc-samples/mysql/README.md.

use super::{ConnectSchema, Kind, SOURCE_LENGTH, SOURCE_SCALE};

/// The Postgres type of a propagated MySQL column, where the source type
/// says more than the Connect type; `None` lets the logical or primitive
/// type decide (integers, floats, blobs, ENUM and SET).
pub(super) fn source_pg_type(schema: &ConnectSchema) -> Option<String> {
    let t = schema.source_type()?;
    let length = schema.param_u32(SOURCE_LENGTH);
    // A temporal type's `length` is its fractional digits; none means 0.
    let fsp = |base: &str| format!("{base}({})", length.filter(|p| *p <= 6).unwrap_or(0));
    let string_like = matches!(schema.kind, Kind::String);
    let base = t.trim_end_matches(" ZEROFILL");
    Some(match base {
        // Up to 18446744073709551615: past bigint. Its values arrive as a
        // Decimal (`bigint.unsigned.handling.mode=precise`) or as a wrapped
        // long (`value::convert` unwraps them by this type).
        "BIGINT UNSIGNED" | "SERIAL" => "numeric(20,0)".into(),
        "DECIMAL" | "DECIMAL UNSIGNED" | "NUMERIC" | "NUMERIC UNSIGNED" => {
            match (length, schema.param_u32(SOURCE_SCALE)) {
                (Some(p), s) if (1..=65).contains(&p) => format!("numeric({p},{})", s.unwrap_or(0)),
                _ => "numeric".into(),
            }
        }
        // DATETIME is a wall-clock time; TIMESTAMP an instant (UTC in the
        // binlog, `ZonedTimestamp` in the event).
        "DATETIME" => fsp("timestamp"),
        "TIMESTAMP" => fsp("timestamptz"),
        // -838:59:59 to 838:59:59: a duration, not a time of day.
        "TIME" => fsp("interval"),
        "DATE" => "date".into(),
        "YEAR" => "integer".into(),
        "CHAR" | "VARCHAR" | "NCHAR" | "NVARCHAR" if string_like => match length {
            Some(n) if (1..=65_535).contains(&n) => format!("varchar({n})"),
            _ => "text".into(),
        },
        "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" if string_like => "text".into(),
        "JSON" => "jsonb".into(),
        "BIT" => match length {
            Some(n) if (1..=64).contains(&n) => format!("bit({n})"),
            _ => "bit varying".into(),
        },
        _ => return None,
    })
}

/// A logical type that reads differently from MySQL: `MicroTime` holds a
/// TIME, which spans ±838 hours.
pub(super) fn logical_pg_type(schema: &ConnectSchema) -> Option<String> {
    match schema.logical() {
        "io.debezium.time.Time" | "io.debezium.time.MicroTime" | "io.debezium.time.NanoTime" => {
            Some("interval".into())
        }
        _ => None,
    }
}

/// A `BIGINT UNSIGNED` the connector's default `long` mode wrapped into a
/// negative long, restored: the source type tells them apart.
pub(super) fn unsigned_long(schema: &ConnectSchema, v: i64) -> Option<u64> {
    let t = schema.source_type()?;
    (v < 0 && t.starts_with("BIGINT UNSIGNED") && matches!(schema.kind, Kind::Int64))
        .then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::{convert, debezium_shape, ConnectSchema};

    fn field(name: &str, schema: Value) -> Value {
        let mut f = schema;
        f["field"] = json!(name);
        f
    }

    /// A MySQL envelope whose row has `fields`.
    fn envelope(fields: Vec<Value>) -> ConnectSchema {
        ConnectSchema::from_json(&json!({
            "type": "struct",
            "fields": [
                {"type": "struct", "optional": true, "field": "after", "fields": fields},
                {"type": "struct", "field": "source", "name": "io.debezium.connector.mysql.Source",
                 "fields": [{"type": "string", "field": "file"}]}
            ]
        }))
        .unwrap()
    }

    fn key() -> ConnectSchema {
        ConnectSchema::from_json(
            &json!({"type": "struct", "fields": [{"type": "int32", "field": "id"}]}),
        )
        .unwrap()
    }

    #[test]
    fn without_propagated_types_a_time_is_still_a_duration() {
        let shape = debezium_shape(
            &envelope(vec![
                field("id", json!({"type": "int32"})),
                field(
                    "t",
                    json!({"type": "int64", "name": "io.debezium.time.MicroTime"}),
                ),
                field(
                    "ts",
                    json!({"type": "string", "name": "io.debezium.time.ZonedTimestamp"}),
                ),
            ]),
            Some(&key()),
        )
        .unwrap();
        let types: Vec<&str> = shape.columns.iter().map(|c| c.pg_type.as_str()).collect();
        assert_eq!(types, ["integer", "interval", "timestamptz"]);
        let t = ConnectSchema::from_json(
            &json!({"type": "int64", "name": "io.debezium.time.MicroTime"}),
        )
        .unwrap();
        assert_eq!(
            convert(json!(-3_020_399_000_000i64), &t),
            "-838:59:59.000000"
        );
        assert_eq!(convert(json!(-1), &t), "-0:00:00.000001");
        assert_eq!(convert(json!(45_296_789_012i64), &t), "12:34:56.789012");
    }

    #[test]
    fn a_wrapped_bigint_unsigned_is_restored_by_its_source_type() {
        let unsigned = json!({"type": "int64", "parameters": {
            "__debezium.source.column.type": "BIGINT UNSIGNED", "__debezium.source.column.length": "20"}});
        let signed =
            json!({"type": "int64", "parameters": {"__debezium.source.column.type": "BIGINT"}});
        let (u, s) = (
            ConnectSchema::from_json(&unsigned).unwrap(),
            ConnectSchema::from_json(&signed).unwrap(),
        );
        // `bigint.unsigned.handling.mode=long` sends 2^64-1 as -1, 2^63 as i64::MIN.
        assert_eq!(convert(json!(-1), &u).to_string(), "18446744073709551615");
        assert_eq!(
            convert(json!(i64::MIN), &u).to_string(),
            "9223372036854775808"
        );
        assert_eq!(convert(json!(7), &u).to_string(), "7");
        assert_eq!(convert(json!(-1), &s).to_string(), "-1");
        let shape = debezium_shape(
            &envelope(vec![
                field("id", json!({"type": "int32"})),
                field("u", unsigned),
            ]),
            Some(&key()),
        )
        .unwrap();
        assert_eq!(shape.columns[1].pg_type, "numeric(20,0)");
    }
}
