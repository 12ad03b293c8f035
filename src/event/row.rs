//! The projection of an event onto a typed table's columns (routes with
//! `columns`, or tables created from a schema): each column's value from its
//! source (`config::columns::ColumnSource`), the row key, the content hash
//! the fold and the in-table guard agree on, and the row as Postgres reads
//! it — a COPY text line, or for composite columns the `{"column": value}`
//! object `jsonb_to_record` converts.
//!
//! Rust does not convert types: Postgres does, with each column type's own
//! input rules (`store::typed`).

use std::borrow::Cow;

use serde_json::Value;

use super::{copy_text, position};
use crate::config::columns::{ColumnMap, ColumnSource, MappedColumn};
use crate::config::route::SOURCE_POSITION;
use crate::json::hash;
use crate::kafka::message::{text_of_bytes, Poison, PoisonReason, SourceMessage};
use crate::types::{EventHash, RowKey};

/// One event as the column sources see it.
pub struct EventView<'a> {
    pub msg: &'a SourceMessage,
    /// The event as JSON text (what `@payload` stores) and parsed.
    pub text: &'a str,
    pub value: &'a Value,
    /// A change event's `source` block (`envelope = "debezium"`).
    pub source: Option<&'a Value>,
}

/// One event as a typed row.
#[derive(Debug)]
pub struct TypedRow {
    pub key: RowKey,
    /// Hash of the content columns: equal hashes mean "would not change the row".
    pub content_hash: EventHash,
    /// The row as Postgres reads it: a COPY text line ([`ColumnMap::copyable`])
    /// or the `{"column": value, …}` object `jsonb_to_record` converts.
    pub doc: String,
}

impl MappedColumn {
    /// Date/time columns, where Postgres reads `now`, `today`, `tomorrow`
    /// and `yesterday` relative to the clock.
    fn is_date_time(&self) -> bool {
        let t = self.sql_type.name.as_str();
        (t.starts_with("timestamp") || t.starts_with("date") || t.starts_with("time"))
            && !t.ends_with("[]")
    }
}

/// Inputs Postgres resolves against the clock. Accepting them would make a
/// replay write a different value: the table must depend only on the input.
fn is_time_relative(v: &Value) -> bool {
    let Value::String(s) = v else { return false };
    let s = s.trim();
    ["now", "today", "tomorrow", "yesterday"]
        .iter()
        .any(|w| s.eq_ignore_ascii_case(w))
}

impl ColumnMap {
    /// The event as a typed row. `payload` is the parsed message value, `text`
    /// its source; `exclude` shapes the `@event_hash` value.
    pub fn row(&self, ev: &EventView<'_>, exclude: &[String]) -> Result<TypedRow, Poison> {
        let (m, text, payload) = (ev.msg, ev.text, ev.value);
        let event_hash = self.maps_event_hash().then(|| {
            if exclude.is_empty() {
                hash::hash_value(payload)
            } else {
                let mut v = payload.clone();
                hash::remove_pointers(&mut v, exclude);
                hash::hash_value(&v)
            }
        });
        let values: Vec<Cow<'_, Value>> = self
            .columns
            .iter()
            .map(|c| source_value(&c.source, m, Some(payload), ev.source, event_hash))
            .collect();
        let key = self.row_key(|i| values[i].as_ref())?;
        self.refuse_clock_relative(&values)?;
        let row = if self.copyable() {
            self.copy_line(&values, text)
        } else {
            self.doc(&values, text)
        };
        Ok(TypedRow {
            key,
            content_hash: self.content_hash(&values, text.len()),
            doc: row,
        })
    }

    /// The row as one COPY text line, fields in column order (no newline).
    fn copy_line(&self, values: &[Cow<'_, Value>], text: &str) -> String {
        let mut line = String::with_capacity(text.len() + 8 * self.columns.len());
        for (n, (c, v)) in self.columns.iter().zip(values).enumerate() {
            if n > 0 {
                line.push('\t');
            }
            let raw = (c.source == ColumnSource::Payload).then_some(text);
            copy_text::push_field(&mut line, v, c.sql_type.kind, raw);
        }
        line
    }

    fn refuse_clock_relative(&self, values: &[Cow<'_, Value>]) -> Result<(), Poison> {
        for (c, v) in self.columns.iter().zip(values) {
            if c.is_date_time() && is_time_relative(v) {
                return Err((
                    PoisonReason::TimeRelative,
                    format!(
                        "column {} ({}) cannot take {v}: Postgres reads it relative to the clock, \
                         so a replay would write a different value",
                        c.quoted(),
                        c.sql_type
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Hash of the content columns' canonical JSON values.
    fn content_hash(&self, values: &[Cow<'_, Value>], size_hint: usize) -> EventHash {
        let mut canonical = Vec::with_capacity(size_hint + 16);
        canonical.push(b'[');
        for (n, (i, _)) in self.content().enumerate() {
            if n > 0 {
                canonical.push(b',');
            }
            hash::write_canonical(&values[i], &mut canonical);
        }
        canonical.push(b']');
        hash::hash_canonical(&canonical)
    }

    /// The `{"column": value}` object Postgres converts.
    fn doc(&self, values: &[Cow<'_, Value>], text: &str) -> String {
        let mut doc = String::with_capacity(text.len() + 32 * self.columns.len());
        doc.push('{');
        for (n, (c, v)) in self.columns.iter().zip(values).enumerate() {
            if n > 0 {
                doc.push(',');
            }
            doc.push_str(&serde_json::to_string(&c.name).expect("strings serialize"));
            doc.push(':');
            match c.source {
                // The source text is valid JSON already: no re-serialisation.
                ColumnSource::Payload => doc.push_str(text),
                _ => doc.push_str(&serde_json::to_string(v).expect("values serialize")),
            }
        }
        doc.push('}');
        doc
    }

    /// The key of the row a change event deletes: the key columns' sources
    /// read from the deleted row image (`envelope = "debezium"`).
    pub fn key_of(&self, row: &Value, source: Option<&Value>) -> Result<RowKey, Poison> {
        self.row_key(|i| {
            match &self.columns[i].source {
                ColumnSource::Pointer(p) => p.get(row),
                ColumnSource::Source(f) => source.and_then(|s| s.get(f)),
                _ => None,
            }
            .unwrap_or(&Value::Null)
        })
    }

    /// The key a tombstone deletes. Pointer-sourced key columns are read from
    /// the Kafka key parsed as JSON (`{"order_id": 7}`); with a single key
    /// column the Kafka key text itself is the value.
    pub fn tombstone_key(&self, m: &SourceMessage) -> Result<RowKey, Poison> {
        let missing = |e: String| (PoisonReason::MissingKey, e);
        let Some(raw) = m.key.as_deref() else {
            return Err(missing("tombstone without a Kafka key".into()));
        };
        let parsed: Option<Value> = serde_json::from_slice(raw).ok();
        let single = self.key.len() == 1;
        let mut values = Vec::with_capacity(self.key.len());
        for c in self.key_columns() {
            let v = match &c.source {
                ColumnSource::Pointer(p) => match parsed.as_ref().and_then(|v| p.get(v)) {
                    Some(v) => Cow::Borrowed(v),
                    None if single => Cow::Owned(Value::String(text_of_bytes(raw))),
                    None => {
                        return Err(missing(format!(
                            "tombstone key is not a JSON object holding key column `{}` ({p})",
                            c.name
                        )))
                    }
                },
                ColumnSource::Payload | ColumnSource::EventHash => {
                    return Err(missing(format!(
                        "a tombstone has no payload to derive key column `{}` from",
                        c.name
                    )))
                }
                other => source_value(other, m, None, None, None),
            };
            values.push(v);
        }
        self.row_key(|i| {
            let pos = self.key.iter().position(|&k| k == i).expect("key column");
            values[pos].as_ref()
        })
    }

    /// The fold identity of a row: a JSON array of the text form of each key
    /// value (what Postgres parses), so `7` and `"7"` address the same row, as
    /// they do in an integer or text column. Deletes cast these texts to the
    /// key column types (`store::typed::delete`). Key values must be scalars.
    fn row_key<'v>(&self, value_of: impl Fn(usize) -> &'v Value) -> Result<RowKey, Poison> {
        let mut parts = Vec::with_capacity(self.key.len());
        for &i in &self.key {
            let c = &self.columns[i];
            match value_of(i) {
                Value::Null => {
                    return Err((
                        PoisonReason::MissingKey,
                        format!(
                            "key column `{}` ({}) is missing or null",
                            c.name,
                            describe(&c.source)
                        ),
                    ))
                }
                v @ (Value::Object(_) | Value::Array(_)) => {
                    return Err((
                        PoisonReason::InvalidKey,
                        format!(
                            "key column `{}` ({}) is {}; keys must be strings, numbers or booleans",
                            c.name,
                            describe(&c.source),
                            hash::json_kind(v)
                        ),
                    ))
                }
                Value::String(s) => parts.push(s.clone()),
                v => parts.push(hash::canonical_string(v)),
            }
        }
        Ok(RowKey(
            serde_json::to_string(&parts).expect("strings serialize"),
        ))
    }
}

fn describe(s: &ColumnSource) -> String {
    match s {
        ColumnSource::Pointer(p) => p.to_string(),
        ColumnSource::Header(h) => format!("@header:{h}"),
        ColumnSource::Source(f) => format!("@source:{f}"),
        other => format!("{other:?}"),
    }
}

fn source_value<'a>(
    src: &ColumnSource,
    m: &SourceMessage,
    payload: Option<&'a Value>,
    source: Option<&'a Value>,
    event_hash: Option<EventHash>,
) -> Cow<'a, Value> {
    let owned = |v: Value| Cow::Owned(v);
    match src {
        ColumnSource::Pointer(p) => match payload.and_then(|v| p.get(v)) {
            Some(v) => Cow::Borrowed(v),
            None => owned(Value::Null),
        },
        ColumnSource::Payload => payload.map_or(owned(Value::Null), Cow::Borrowed),
        ColumnSource::KafkaKey => owned(
            m.key
                .as_deref()
                .map_or(Value::Null, |k| Value::String(text_of_bytes(k))),
        ),
        ColumnSource::KafkaTopic => owned(Value::String(m.tp.topic.to_string())),
        ColumnSource::KafkaPartition => owned(Value::from(m.tp.partition)),
        ColumnSource::KafkaOffset => owned(Value::from(m.offset.0)),
        ColumnSource::KafkaTimestamp => owned(
            m.timestamp
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map_or(Value::Null, |t| {
                    Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                }),
        ),
        ColumnSource::EventHash => {
            owned(event_hash.map_or(Value::Null, |h| Value::String(format!("\\x{h}"))))
        }
        // Computed, not read: wider than a JSON integer, so written as text.
        ColumnSource::Source(field) if field == SOURCE_POSITION => source
            .and_then(|s| position::of(s, m.offset, m.source_commit).ok())
            .map_or(owned(Value::Null), |p| owned(Value::String(p.to_string()))),
        ColumnSource::Source(field) => match source.and_then(|s| s.get(field)) {
            Some(v) => Cow::Borrowed(v),
            None => owned(Value::Null),
        },
        ColumnSource::Header(name) => owned(
            m.headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.as_deref())
                .map_or(Value::Null, |v| Value::String(text_of_bytes(v))),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::columns::{ColumnKind, SqlType};
    use crate::config::test_routes;
    use crate::types::{Offset, TopicPartition};

    fn map(columns: &str, key: &str, extra: &str) -> Result<ColumnMap, String> {
        test_routes(&format!(
            "topic = \"t\"\ntable = \"t\"\nkey = {key}\ncolumns = {columns}\n{extra}"
        ))
        .map(|r| r[0].columns.clone().unwrap())
        .map_err(|e| e.to_string())
    }

    fn msg(key: Option<&str>, payload: &str) -> SourceMessage {
        SourceMessage {
            tp: TopicPartition::new("orders", 3),
            offset: Offset(42),
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            timestamp: Some(1_700_000_000_123),
            headers: vec![("trace".into(), Some(b"abc".to_vec()))],
            source_commit: None,
        }
    }

    fn view<'a>(msg: &'a SourceMessage, text: &'a str, v: &'a Value) -> EventView<'a> {
        EventView {
            msg,
            text,
            value: v,
            source: None,
        }
    }

    fn row(m: &ColumnMap, msg: &SourceMessage) -> Result<TypedRow, String> {
        let text = std::str::from_utf8(msg.payload.as_deref().unwrap()).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        m.row(&view(msg, text, &v), &[]).map_err(|(_, e)| e)
    }

    #[test]
    fn clock_relative_time_values_are_refused() {
        let mut m = map(
            r#"{ id = "/id", at = "/at", note = "/note" }"#,
            r#""id""#,
            "",
        )
        .unwrap();
        for c in &mut m.columns {
            c.sql_type = SqlType::new(
                match c.name.as_str() {
                    "at" => "timestamp with time zone",
                    _ => "text",
                },
                ColumnKind::Scalar,
            );
        }
        let err = row(&m, &msg(None, r#"{"id":1,"at":" Yesterday ","note":"x"}"#)).unwrap_err();
        assert!(
            err.contains(r#"column "at""#) && err.contains("clock"),
            "{err}"
        );
        assert!(row(&m, &msg(None, r#"{"id":1,"at":"2026-01-01","note":"now"}"#)).is_ok());
        assert!(row(&m, &msg(None, r#"{"id":1,"at":"infinity"}"#)).is_ok());
    }

    #[test]
    fn doc_holds_every_source() {
        let m = map(
            r#"{ id = "/id", amount = "/a/b", doc = "@payload", k = "@kafka_key", t = "@kafka_topic", p = "@kafka_partition", o = "@kafka_offset", ts = "@kafka_timestamp", h = "@event_hash", tr = "@header:trace", none = "/missing" }"#,
            r#""id""#,
            "",
        )
        .unwrap();
        let payload = r#"{"id":7,"a":{"b":1.50}}"#;
        let r = row(&m, &msg(Some("key-1"), payload)).unwrap();
        // One COPY field per column, in column order.
        let fields: BTreeMap<&str, Option<String>> = m
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .zip(copy_text::split_line(&r.doc))
            .collect();
        let f = |name: &str| fields[name].clone();
        assert_eq!(f("id").as_deref(), Some("7"));
        assert_eq!(f("amount").as_deref(), Some("1.50"), "number text is kept");
        assert_eq!(
            f("doc").as_deref(),
            Some(payload),
            "the payload as received"
        );
        assert_eq!(f("k").as_deref(), Some("key-1"));
        assert_eq!(f("t").as_deref(), Some("orders"));
        assert_eq!(f("p").as_deref(), Some("3"));
        assert_eq!(f("o").as_deref(), Some("42"));
        assert_eq!(f("ts").as_deref(), Some("2023-11-14T22:13:20.123Z"));
        assert!(f("h").unwrap().starts_with("\\x"));
        assert_eq!(f("tr").as_deref(), Some("abc"));
        assert_eq!(f("none"), None);
        assert_eq!(r.key, RowKey(r#"["7"]"#.into()));
    }

    #[test]
    fn content_hash_ignores_position_columns_only() {
        let m = map(
            r#"{ id = "/id", v = "/v", o = "@kafka_offset" }"#,
            r#""id""#,
            "",
        )
        .unwrap();
        let a = row(&m, &msg(None, r#"{"id":1,"v":"x","noise":1}"#)).unwrap();
        let mut later = msg(None, r#"{"noise":2,"v":"x","id":1}"#);
        later.offset = Offset(99);
        let b = row(&m, &later).unwrap();
        assert_eq!(a.content_hash, b.content_hash, "same mapped content");
        let c = row(&m, &msg(None, r#"{"id":1,"v":"y"}"#)).unwrap();
        assert_ne!(a.content_hash, c.content_hash);
    }

    #[test]
    fn key_text_forms_and_tombstones_agree() {
        let m = map(r#"{ id = "/id", v = "/v" }"#, r#""id""#, "").unwrap();
        let up = row(&m, &msg(None, r#"{"id":7,"v":1}"#)).unwrap();
        let mut t = msg(Some("7"), "null");
        t.payload = None;
        assert_eq!(m.tombstone_key(&t).unwrap(), up.key);
        t.key = Some(br#"{"id":"7"}"#.to_vec());
        assert_eq!(m.tombstone_key(&t).unwrap(), up.key);

        let err = row(&m, &msg(None, r#"{"v":1}"#)).unwrap_err();
        assert!(err.contains("`id`") && err.contains("/id"), "{err}");
    }

    #[test]
    fn keys_must_be_scalars() {
        let m = map(r#"{ id = "/id", v = "/v" }"#, r#""id""#, "").unwrap();
        let text = r#"{"id":{"nested":1},"v":1}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let message = msg(None, text);
        let (reason, error) = m.row(&view(&message, text, &v), &[]).unwrap_err();
        assert_eq!(reason, PoisonReason::InvalidKey);
        assert!(
            error.contains("`id`") && error.contains("an object"),
            "{error}"
        );
        assert!(row(&m, &msg(None, r#"{"id":true,"v":1}"#)).is_ok());
    }

    #[test]
    fn composite_keys_cannot_collide_by_concatenation() {
        let m = map(r#"{ a = "/a", b = "/b" }"#, r#"["a", "b"]"#, "").unwrap();
        let x = row(&m, &msg(None, r#"{"a":"1,2","b":"3"}"#)).unwrap();
        let y = row(&m, &msg(None, r#"{"a":"1","b":"2,3"}"#)).unwrap();
        assert_ne!(x.key, y.key);
    }
}
