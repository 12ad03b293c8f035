//! Debezium change events (`envelope = "debezium"`), unwrapped into the row
//! image the rest of the sink works on. Pure: no I/O.
//!
//! * `op` `c` (insert), `r` (snapshot read), `u` (update): the row is `after`.
//! * `d` (delete): the row is identified by `before` with the Kafka key's
//!   fields laid over it — with the default replica identity `before` holds
//!   only the key columns (other columns arrive as `""` or `null`).
//! * `t` (truncate, only with `skipped.operations` not containing `t`): the
//!   whole table; the route's `on_truncate` decides.
//! * The Kafka tombstone that follows every delete carries nothing new: the
//!   route ignores it (counted as skipped, not as a second delete).
//!
//! Values with embedded schemas (`{"schema": …, "payload": …}`, the JSON
//! converter with `schemas.enable = true`) are unwrapped, and fields whose
//! Connect schema names a logical type are converted to the text Postgres
//! reads for the matching column type: dates, times and timestamps
//! (`io.debezium.time.*`, Connect's `Date`/`Time`/`Timestamp`), exact decimals
//! (Connect `Decimal`, `VariableScaleDecimal`), durations, JSON columns
//! (`io.debezium.data.Json`, a string holding JSON, becomes that JSON) and
//! bytes (base64 → `\x` hex). Without schemas those arrive as Debezium wrote
//! them (temporal values as numbers): use schemas, or columns that take the
//! numbers.

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta};
use serde_json::{Map, Value};

/// Debezium's `op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Read,
    Update,
    Delete,
    Truncate,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "c" => Op::Create,
            "r" => Op::Read,
            "u" => Op::Update,
            "d" => Op::Delete,
            "t" => Op::Truncate,
            _ => return None,
        })
    }

    /// The `op` label of `change_events_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Read => "r",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// One change event, unwrapped.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub op: Op,
    /// The row after the change (`c`, `r`, `u`), the identified row (`d`),
    /// `Value::Null` for `t`.
    pub row: Value,
    /// The `source` block: where in the source database the change happened.
    pub source: Value,
}

/// Unwraps a Debezium change event. `key` is the Kafka key parsed as JSON
/// (if it is JSON), `value` the message value parsed as JSON.
pub fn decode(key: Option<&Value>, value: Value) -> Result<Change, String> {
    let key = key.map(|k| unwrap_schema(k.clone()));
    let value = unwrap_schema(value);
    let Value::Object(mut event) = value else {
        return Err("a Debezium change event must be a JSON object".into());
    };
    let op = match event.get("op") {
        Some(Value::String(s)) => {
            Op::parse(s).ok_or_else(|| format!("unknown Debezium op `{s}`"))?
        }
        _ => return Err("not a Debezium change event: no `op`".into()),
    };
    let source = event.remove("source").unwrap_or(Value::Null);
    if !source.is_object() {
        return Err("Debezium change event without a `source` block".into());
    }
    let row = match op {
        Op::Create | Op::Read | Op::Update => match event.remove("after") {
            Some(after @ Value::Object(_)) => after,
            _ => return Err(format!("op `{}` without an `after` row", op.as_str())),
        },
        Op::Delete => deleted_row(event.remove("before"), key)?,
        Op::Truncate => Value::Null,
    };
    Ok(Change { op, row, source })
}

/// The row a delete identifies: `before` with the key's fields laid over it.
fn deleted_row(before: Option<Value>, key: Option<Value>) -> Result<Value, String> {
    let mut row = match before {
        Some(Value::Object(b)) => b,
        _ => Map::new(),
    };
    if let Some(Value::Object(k)) = key {
        row.extend(k);
    }
    if row.is_empty() {
        return Err("delete without `before` row or key fields".into());
    }
    Ok(Value::Object(row))
}

/// `{"schema": …, "payload": …}` → the payload with logical types converted.
fn unwrap_schema(v: Value) -> Value {
    match v {
        Value::Object(mut m)
            if m.len() == 2 && m.contains_key("schema") && m.contains_key("payload") =>
        {
            let schema = m.remove("schema").unwrap_or(Value::Null);
            let payload = m.remove("payload").unwrap_or(Value::Null);
            convert(payload, &schema)
        }
        other => other,
    }
}

/// Converts `v` as described by its Connect schema `schema`.
fn convert(v: Value, schema: &Value) -> Value {
    if v.is_null() {
        return v;
    }
    let name = schema.get("name").and_then(Value::as_str).unwrap_or("");
    match (schema.get("type").and_then(Value::as_str), v) {
        (Some("struct"), Value::Object(m)) if name == "io.debezium.data.VariableScaleDecimal" => {
            variable_scale_decimal(&m).unwrap_or(Value::Object(m))
        }
        (Some("struct"), Value::Object(m)) => Value::Object(convert_fields(m, schema)),
        (Some("array"), Value::Array(items)) => {
            let item = schema.get("items").unwrap_or(&Value::Null);
            Value::Array(items.into_iter().map(|x| convert(x, item)).collect())
        }
        (Some("map"), Value::Object(m)) => {
            let values = schema.get("values").unwrap_or(&Value::Null);
            Value::Object(
                m.into_iter()
                    .map(|(k, x)| (k, convert(x, values)))
                    .collect(),
            )
        }
        (_, v) => logical(name, schema, v),
    }
}

fn convert_fields(m: Map<String, Value>, schema: &Value) -> Map<String, Value> {
    let fields = schema.get("fields").and_then(Value::as_array);
    m.into_iter()
        .map(|(k, x)| {
            let field = fields.and_then(|fs| {
                fs.iter()
                    .find(|f| f.get("field").and_then(Value::as_str) == Some(&k))
            });
            let x = match field {
                Some(f) => convert(x, f),
                None => x,
            };
            (k, x)
        })
        .collect()
}

/// A scalar of a named (logical) Connect type, as Postgres reads it.
fn logical(name: &str, schema: &Value, v: Value) -> Value {
    let int = v.as_i64();
    let converted = match name {
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
        "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => int
            .and_then(|ms| timestamp(ms.checked_mul(1_000)?))
            .map(Value::String),
        "io.debezium.time.MicroTimestamp" => int.and_then(timestamp).map(Value::String),
        "io.debezium.time.NanoTimestamp" => int
            .and_then(|ns| timestamp(ns.div_euclid(1_000)))
            .map(Value::String),
        "io.debezium.time.MicroDuration" => {
            int.map(|us| Value::String(format!("{us} microseconds")))
        }
        "io.debezium.time.NanoDuration" => {
            int.map(|ns| Value::String(format!("{} microseconds", ns / 1_000)))
        }
        "io.debezium.data.Json" => v.as_str().and_then(|s| serde_json::from_str(s).ok()),
        "org.apache.kafka.connect.data.Decimal" => {
            let scale = schema
                .pointer("/parameters/scale")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            v.as_str().and_then(|b| decimal(b, scale))
        }
        _ if schema.get("type").and_then(Value::as_str) == Some("bytes") => {
            v.as_str().and_then(bytes_hex).map(Value::String)
        }
        _ => None,
    };
    converted.unwrap_or(v)
}

fn date(days: i64) -> Option<String> {
    let d = NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(TimeDelta::try_days(days)?)?;
    Some(d.format("%Y-%m-%d").to_string())
}

fn time_of_day(micros: i64) -> Option<String> {
    let secs = u32::try_from(micros.div_euclid(1_000_000)).ok()?;
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1_000).ok()?;
    let t = NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)?;
    Some(t.format("%H:%M:%S%.6f").to_string())
}

/// A `timestamp without time zone` value (Debezium encodes it as UTC epoch).
fn timestamp(micros: i64) -> Option<String> {
    let t = DateTime::from_timestamp_micros(micros)?.naive_utc();
    Some(t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
}

fn decode_base64(b: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(b).ok()
}

fn bytes_hex(b: &str) -> Option<String> {
    decode_base64(b).map(|bytes| format!("\\x{}", hex::encode(bytes)))
}

/// Big-endian two's complement unscaled value and a scale → exact decimal.
fn decimal(b64: &str, scale: u32) -> Option<Value> {
    let bytes = decode_base64(b64)?;
    let unscaled = num_from_twos_complement(&bytes)?;
    Some(Value::Number(scaled_number(unscaled, scale)?))
}

fn variable_scale_decimal(m: &Map<String, Value>) -> Option<Value> {
    let scale = u32::try_from(m.get("scale")?.as_i64()?).ok()?;
    decimal(m.get("value")?.as_str()?, scale)
}

/// Up to 16 bytes (numeric(38) fits); longer values are left as they came.
fn num_from_twos_complement(bytes: &[u8]) -> Option<i128> {
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    Some(i128::from_be_bytes(buf))
}

/// `unscaled × 10^-scale` as a JSON number with exactly those digits.
fn scaled_number(unscaled: i128, scale: u32) -> Option<serde_json::Number> {
    let digits = unscaled.unsigned_abs().to_string();
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
    let sign = if unscaled < 0 { "-" } else { "" };
    serde_json::from_str(&format!("{sign}{text}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events of one captured sample file (docs/cdc-samples).
    fn sample(dir: &str, file: &str) -> Vec<(Option<Value>, Value)> {
        let path = format!(
            "{}/docs/cdc-samples/{dir}/{file}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    Some(e["key"].clone()).filter(|k| !k.is_null()),
                    e["value"].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn inserts_updates_and_deletes_give_their_rows() {
        for dir in ["schemas-off", "schemas-on"] {
            let (k, v) = &sample(dir, "02-insert")[0];
            let c = decode(k.as_ref(), v.clone()).unwrap();
            assert_eq!(c.op, Op::Create);
            assert_eq!(c.row["id"], 3);
            assert_eq!(c.row["amount"], "30.25");
            assert!(c.source["lsn"].is_number(), "{dir}");

            let events = sample(dir, "04-delete");
            let c = decode(events[0].0.as_ref(), events[0].1.clone()).unwrap();
            assert_eq!(c.op, Op::Delete);
            assert_eq!(c.row["id"], 2);
            assert!(events[1].1.is_null(), "a tombstone follows the delete");
        }
    }

    #[test]
    fn a_primary_key_update_is_a_delete_and_an_insert_at_one_position() {
        let events = sample("schemas-off", "05-primary-key-update");
        let d = decode(events[0].0.as_ref(), events[0].1.clone()).unwrap();
        let c = decode(events[2].0.as_ref(), events[2].1.clone()).unwrap();
        assert_eq!((d.op, d.row["id"].clone()), (Op::Delete, Value::from(3)));
        assert_eq!((c.op, c.row["id"].clone()), (Op::Create, Value::from(30)));
        assert_eq!(d.source["lsn"], c.source["lsn"]);
    }

    #[test]
    fn truncate_has_no_row() {
        let (k, v) = &sample("schemas-off", "07-truncate")[0];
        let c = decode(k.as_ref(), v.clone()).unwrap();
        assert_eq!(c.op, Op::Truncate);
        assert!(c.row.is_null());
    }

    #[test]
    fn logical_types_become_what_postgres_reads() {
        let (k, v) = &sample("schemas-on", "12-types")[0];
        let row = decode(k.as_ref(), v.clone()).unwrap().row;
        // insert … '2026-11-27', '2026-11-27 10:00:00.123456', …, '12:34:56', …,
        // '{"a":[1,2]}', '\xdeadbeef', …, '1 day 02:00:00'
        assert_eq!(row["d"], "2026-11-27");
        assert_eq!(row["ts"], "2026-11-27T10:00:00.123456");
        assert_eq!(row["tm"], "12:34:56.000000");
        assert_eq!(row["j"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(row["ba"], "\\xdeadbeef");
        assert_eq!(row["iv"], "93600000000 microseconds");
        assert_eq!(row["tstz"], "2026-11-27T09:00:00.500000Z");

        let (k, v) = &sample("schemas-on", "13-types-decimal-precise")[0];
        let row = decode(k.as_ref(), v.clone()).unwrap().row;
        assert_eq!(
            row["n"].to_string(),
            "12345.678",
            "exact, from the unscaled bytes"
        );
        assert_eq!(row["nu"].to_string(), "0.1");
    }

    #[test]
    fn decimals_keep_every_digit_and_sign() {
        assert_eq!(scaled_number(-5, 3).unwrap().to_string(), "-0.005");
        assert_eq!(
            scaled_number(123_456_789_012_345_678_901_234_567, 10)
                .unwrap()
                .to_string(),
            "12345678901234567.8901234567"
        );
        assert_eq!(num_from_twos_complement(&[0xff, 0x38]), Some(-200));
    }

    #[test]
    fn malformed_events_are_refused_with_a_reason() {
        for (v, want) in [
            (serde_json::json!({"after": {}}), "no `op`"),
            (
                serde_json::json!({"op": "x", "source": {}}),
                "unknown Debezium op",
            ),
            (
                serde_json::json!({"op": "c", "source": {}}),
                "without an `after`",
            ),
            (serde_json::json!([1]), "JSON object"),
        ] {
            let e = decode(None, v).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
