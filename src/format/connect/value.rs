//! Payload values converted by their Connect schema into the text Postgres
//! reads for the column type `table::pg_type` gives (Debezium's encodings:
//! docs/cdc-samples/types, tests/cdc-samples/mysql).

use base64::Engine;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use num_bigint::BigInt;
use serde_json::{Map, Value};

use super::{mysql, ConnectSchema, Kind};

/// Converts `v` as described by `schema` into the JSON whose text Postgres
/// reads for the column type [`super::pg_type`] gives.
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
        "io.debezium.time.Date" => int.and_then(date).map(Value::String),
        "org.apache.kafka.connect.data.Date" => match &v {
            Value::Object(m) => calendar_date(m),
            _ => int.and_then(date),
        }
        .map(Value::String),
        "io.debezium.time.Time" => int
            .and_then(|ms| clock_time(ms.checked_mul(1_000)?))
            .map(Value::String),
        "org.apache.kafka.connect.data.Time" => match &v {
            Value::Object(m) => time_of_day_message(m),
            _ => int.and_then(|ms| clock_time(ms.checked_mul(1_000)?)),
        }
        .map(Value::String),
        "io.debezium.time.MicroTime" => int.and_then(clock_time).map(Value::String),
        "io.debezium.time.NanoTime" => int.and_then(|ns| clock_time(ns / 1_000)).map(Value::String),
        "io.debezium.time.Timestamp" => int.and_then(|ms| timestamp(ms, 1_000)).map(Value::String),
        // Protobuf's `google.protobuf.Timestamp` decodes to RFC 3339 in UTC.
        "org.apache.kafka.connect.data.Timestamp" => match &v {
            Value::String(t) => t.strip_suffix('Z').map(str::to_string),
            _ => int.and_then(|ms| timestamp(ms, 1_000)),
        }
        .map(Value::String),
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
            match &v {
                Value::Object(m) => confluent_decimal(m, scale),
                _ => v.as_str().and_then(|b| decimal(b, scale)),
            }
        }
        "io.debezium.data.Bits" => v
            .as_str()
            .and_then(bytes_of)
            .map(|b| Value::String(bit_string(&b, schema.param_u32("length")))),
        _ => match (&schema.kind, &v) {
            (Kind::Int64, Value::Number(n)) => n
                .as_i64()
                .and_then(|i| mysql::unsigned_long(schema, i))
                .map(Value::from),
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
pub(super) const POINT: &str = "io.debezium.data.geometry.Point";

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

/// A time of day, or (a MySQL `TIME`, into an `interval` column) a signed
/// duration in hours, minutes and seconds.
fn clock_time(micros: i64) -> Option<String> {
    time_of_day(micros).or_else(|| {
        let sign = if micros < 0 { "-" } else { "" };
        let us = micros.unsigned_abs();
        let (h, rest) = (us / 3_600_000_000, us % 3_600_000_000);
        let (m, rest) = (rest / 60_000_000, rest % 60_000_000);
        Some(format!(
            "{sign}{h}:{m:02}:{:02}.{:06}",
            rest / 1_000_000,
            rest % 1_000_000
        ))
    })
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

/// Protobuf's `confluent.type.Decimal`: `{value, precision, scale}`, the
/// unscaled value's bytes as the Protobuf decoder writes them (`\\x` hex).
fn confluent_decimal(m: &Map<String, Value>, scale: u32) -> Option<Value> {
    // The message's own scale is the one its bytes are at.
    let scale = match m.get("scale").and_then(Value::as_i64) {
        Some(s) => u32::try_from(s).ok()?,
        None => scale,
    };
    decimal(m.get("value")?.as_str()?, scale)
}

/// Protobuf's `google.type.Date`: `{year, month, day}`.
fn calendar_date(m: &Map<String, Value>) -> Option<String> {
    let part = |k| m.get(k).and_then(Value::as_i64);
    let d = NaiveDate::from_ymd_opt(
        i32::try_from(part("year")?).ok()?,
        u32::try_from(part("month")?).ok()?,
        u32::try_from(part("day")?).ok()?,
    )?;
    Some(format_date(d))
}

/// Protobuf's `google.type.TimeOfDay`: `{hours, minutes, seconds, nanos}`.
fn time_of_day_message(m: &Map<String, Value>) -> Option<String> {
    let part = |k| m.get(k).and_then(Value::as_i64);
    let micros = ((part("hours")? * 60 + part("minutes")?) * 60 + part("seconds")?) * 1_000_000
        + part("nanos")? / 1_000;
    time_of_day(micros)
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
}
