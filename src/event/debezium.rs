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
//! converter with `schemas.enable = true`) are converted by their Connect
//! schema into the text Postgres reads (`format::connect`: dates, times,
//! exact decimals, durations, JSON, bits, bytes). The decode stage reads
//! them without parsing the schema per message (`event::decode`); [`decode`]
//! takes a parsed `Value` (schemas off, or a registry format). Without
//! schemas values arrive as Debezium wrote them (temporal values as
//! numbers): use schemas, or columns that take the numbers.

use serde_json::{Map, Value};

use crate::format::connect::{self, ConnectSchema};

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
/// (if it is JSON), `value` the message value parsed as JSON; either may
/// carry an embedded schema.
pub fn decode(key: Option<&Value>, value: Value) -> Result<Change, String> {
    let key = key.map(|k| unwrap_schema(k.clone()));
    from_envelope(key, unwrap_schema(value))
}

/// The change an envelope (`op`, `before`/`after`, `source`) describes;
/// `key` and `envelope` already converted from their schemas, if any.
pub fn from_envelope(key: Option<Value>, envelope: Value) -> Result<Change, String> {
    let Value::Object(mut event) = envelope else {
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
            match ConnectSchema::from_json(&schema) {
                Ok(s) => connect::convert(payload, &s),
                Err(_) => payload,
            }
        }
        other => other,
    }
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
