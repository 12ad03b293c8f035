//! Typed column mapping: `columns = { order_id = "/order_id", amount = "/amount" }`
//! writes events into an existing typed table.
//!
//! Rust does not convert types. Each event becomes a JSON object
//! `{"column": value, …}`. Postgres converts it with `jsonb_to_record` against
//! the column types it reported at startup (`store::schema`). So every type
//! with a text or JSON input works the way Postgres defines it: numeric,
//! timestamptz, uuid, jsonb, arrays, composites, domains. A value that does not
//! convert is isolated and dead-lettered with the column and value named
//! (`store::typed`).
//!
//! Dedup in typed tables is by content. An event is a duplicate when it would
//! not change any mapped column except the source-position columns
//! (`@kafka_topic`, `@kafka_partition`, `@kafka_offset`, `@kafka_timestamp`).
//! Those columns differ between re-deliveries of one event. They are written
//! whenever the content changes and never cause an update on their own, just
//! like the position columns of document tables. The in-batch fold hashes the
//! same content values, so both stages agree on what a duplicate is.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::event::copy_text;
use crate::json::hash;
use crate::json::pointer::JsonPointer;
use crate::kafka::message::{text_of_bytes, PoisonReason, SourceMessage};
use crate::types::{quote_ident, EventHash, RowKey};

/// Where a column's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnSource {
    /// A JSON pointer into the payload; missing → NULL.
    Pointer(JsonPointer),
    /// The whole payload (schema-less JSON into a json/jsonb column).
    Payload,
    KafkaKey,
    KafkaTopic,
    KafkaPartition,
    KafkaOffset,
    /// The message timestamp as RFC 3339 UTC with milliseconds.
    KafkaTimestamp,
    /// The event hash (`\x…` hex, for a bytea column), as in document tables.
    EventHash,
    /// A Kafka header's value (the first header of that name); missing → NULL.
    Header(String),
    /// A field of a change event's `source` block (`envelope = "debezium"`),
    /// e.g. `@source:lsn`; missing → NULL.
    Source(String),
}

impl ColumnSource {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            _ if s.starts_with('/') => ColumnSource::Pointer(JsonPointer::parse(s)),
            "@payload" => ColumnSource::Payload,
            "@kafka_key" => ColumnSource::KafkaKey,
            "@kafka_topic" => ColumnSource::KafkaTopic,
            "@kafka_partition" => ColumnSource::KafkaPartition,
            "@kafka_offset" => ColumnSource::KafkaOffset,
            "@kafka_timestamp" => ColumnSource::KafkaTimestamp,
            "@event_hash" => ColumnSource::EventHash,
            _ => match (s.strip_prefix("@header:"), s.strip_prefix("@source:")) {
                (Some(h), _) if !h.is_empty() => ColumnSource::Header(h.to_string()),
                (_, Some(f)) if !f.is_empty() => ColumnSource::Source(f.to_string()),
                _ => {
                    return Err(format!(
                        "`{s}` is not a JSON pointer (`/field`) or one of @payload, @kafka_key, \
                         @kafka_topic, @kafka_partition, @kafka_offset, @kafka_timestamp, \
                         @event_hash, @header:<name>, @source:<field>"
                    ))
                }
            },
        })
    }

    /// Source-position metadata: differs between re-deliveries of one event.
    /// (`@source:…` fields do not: a re-sent change event carries the same
    /// `source` block.)
    pub fn is_position(&self) -> bool {
        matches!(
            self,
            ColumnSource::KafkaTopic
                | ColumnSource::KafkaPartition
                | ColumnSource::KafkaOffset
                | ColumnSource::KafkaTimestamp
        )
    }
}

/// A column's type as read from the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlType {
    /// As `format_type()` prints it: valid SQL, identifiers quoted by Postgres.
    pub name: String,
    pub kind: ColumnKind,
    /// The type has an `=` operator (json, xml, point… do not).
    pub comparable: bool,
}

impl SqlType {
    pub fn new(name: impl Into<String>, kind: ColumnKind) -> Self {
        Self {
            name: name.into(),
            kind,
            comparable: true,
        }
    }
}

impl std::fmt::Display for SqlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

pub use crate::event::copy_text::ColumnKind;

/// A mapped column. `T` is its SQL type: `()` while only the configuration is
/// known ([`ColumnSpec`]), [`SqlType`] once read from the catalog
/// ([`ColumnMap`]).
#[derive(Clone, Debug)]
pub struct MappedColumn<T = SqlType> {
    pub name: String,
    pub source: ColumnSource,
    pub sql_type: T,
}

impl<T> MappedColumn<T> {
    pub fn quoted(&self) -> String {
        quote_ident(&self.name)
    }
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

/// A validated column mapping of one route; `T` as in [`MappedColumn`].
#[derive(Clone, Debug)]
pub struct ColumnMap<T = SqlType> {
    /// Sorted by column name (deterministic statements and hashes).
    pub columns: Vec<MappedColumn<T>>,
    /// Indexes of the key columns (the ON CONFLICT target), in `key` order.
    pub key: Vec<usize>,
    /// Index of the column fed by the route's `version` pointer.
    pub version: Option<usize>,
}

/// A column mapping before the column types were read from the database.
pub type ColumnSpec = ColumnMap<()>;

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

impl ColumnSpec {
    /// Validates a route's `columns`, `key` (column names) and `version`;
    /// pushes problems.
    pub fn from_config(
        at: &str,
        columns: &BTreeMap<String, String>,
        key: &[String],
        version: Option<&str>,
        cdc: bool,
        p: &mut Vec<String>,
    ) -> Option<ColumnSpec> {
        let before = p.len();
        if columns.is_empty() {
            p.push(format!("{at}.columns: map at least one column"));
        }
        let mut mapped = Vec::with_capacity(columns.len());
        for (name, src) in columns {
            if name.is_empty() {
                p.push(format!("{at}.columns: a column name is empty"));
            }
            match ColumnSource::parse(src) {
                Ok(ColumnSource::Source(_)) if !cdc => p.push(format!(
                    "{at}.columns.{name}: `{src}` reads a change event's source; set `envelope = \"debezium\"`"
                )),
                Ok(source) => mapped.push(MappedColumn {
                    name: name.clone(),
                    source,
                    sql_type: (),
                }),
                Err(e) => p.push(format!("{at}.columns.{name}: {e}")),
            }
        }
        let names = key;
        if names.is_empty() {
            p.push(format!("{at}.key: list must not be empty"));
        }
        let mut key_idx = Vec::new();
        for n in names {
            match mapped.iter().position(|c| &c.name == n) {
                Some(i) if key_idx.contains(&i) => {
                    p.push(format!("{at}.key: column `{n}` is listed twice"))
                }
                Some(i) if mapped[i].source == ColumnSource::Payload => p.push(format!(
                    "{at}.key: column `{n}` holds @payload, which cannot be a key"
                )),
                Some(i) => key_idx.push(i),
                None => p.push(format!(
                    "{at}.key: with `columns`, key names mapped columns; `{n}` is not one of them"
                )),
            }
        }
        let version_idx = match version {
            None => None,
            Some(v) => {
                let wanted = ColumnSource::parse(v).ok();
                let i = mapped
                    .iter()
                    .position(|c| Some(&c.source) == wanted.as_ref());
                if i.is_none() {
                    p.push(format!(
                        "{at}.version: `{v}` must also be mapped to a column (the guard compares that column)"
                    ));
                }
                i
            }
        };
        (p.len() == before).then_some(ColumnMap {
            columns: mapped,
            key: key_idx,
            version: version_idx,
        })
    }

    /// The mapping with each column's SQL type, as `type_of` reports it;
    /// `Err` names the first column without one.
    pub fn resolve(
        self,
        mut type_of: impl FnMut(&str) -> Option<SqlType>,
    ) -> Result<ColumnMap, String> {
        let mut columns = Vec::with_capacity(self.columns.len());
        for c in self.columns {
            let sql_type = type_of(&c.name)
                .ok_or_else(|| format!("column {} has no known type", c.quoted()))?;
            columns.push(MappedColumn {
                name: c.name,
                source: c.source,
                sql_type,
            });
        }
        Ok(ColumnMap {
            columns,
            key: self.key,
            version: self.version,
        })
    }
}

impl<T> ColumnMap<T> {
    pub fn maps_headers(&self) -> bool {
        self.columns
            .iter()
            .any(|c| matches!(c.source, ColumnSource::Header(_)))
    }

    pub fn maps_event_hash(&self) -> bool {
        self.columns
            .iter()
            .any(|c| c.source == ColumnSource::EventHash)
    }

    /// Columns that decide whether an event changes its row: not key, not
    /// source position.
    pub fn content(&self) -> impl Iterator<Item = (usize, &MappedColumn<T>)> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(i, c)| !self.key.contains(i) && !c.source.is_position())
    }

    pub fn key_columns(&self) -> impl Iterator<Item = &MappedColumn<T>> {
        self.key.iter().map(|&i| &self.columns[i])
    }
}

impl ColumnMap {
    /// The event as a typed row. `payload` is the parsed message value, `text`
    /// its source; `exclude` shapes the `@event_hash` value.
    pub fn row(
        &self,
        ev: &EventView<'_>,
        exclude: &[String],
    ) -> Result<TypedRow, (PoisonReason, String)> {
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

    /// Whether rows travel as COPY text (every column takes its value as
    /// text); otherwise as JSON converted by `jsonb_to_record` server side.
    pub fn copyable(&self) -> bool {
        self.columns
            .iter()
            .all(|c| c.sql_type.kind != ColumnKind::Structured)
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

    fn refuse_clock_relative(
        &self,
        values: &[Cow<'_, Value>],
    ) -> Result<(), (PoisonReason, String)> {
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
    pub fn key_of(&self, ev: &EventView<'_>) -> Result<RowKey, (PoisonReason, String)> {
        self.row_key(|i| {
            match &self.columns[i].source {
                ColumnSource::Pointer(p) => p.get(ev.value),
                ColumnSource::Source(f) => ev.source.and_then(|s| s.get(f)),
                _ => None,
            }
            .unwrap_or(&Value::Null)
        })
    }

    /// The key a tombstone deletes. Pointer-sourced key columns are read from
    /// the Kafka key parsed as JSON (`{"order_id": 7}`); with a single key
    /// column the Kafka key text itself is the value.
    pub fn tombstone_key(&self, m: &SourceMessage) -> Result<RowKey, (PoisonReason, String)> {
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
    fn row_key<'v>(
        &self,
        value_of: impl Fn(usize) -> &'v Value,
    ) -> Result<RowKey, (PoisonReason, String)> {
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
    use super::*;
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

    #[test]
    fn config_problems_name_the_key() {
        for (cols, key, extra, want) in [
            (r#"{ id = "/id" }"#, r#""nope""#, "", "route[0].key"),
            (r#"{ id = "id" }"#, r#""id""#, "", "route[0].columns.id"),
            (
                r#"{ id = "@header:" }"#,
                r#""id""#,
                "",
                "route[0].columns.id",
            ),
            (
                r#"{ id = "/id" }"#,
                r#""id""#,
                r#"version = "/v""#,
                "route[0].version",
            ),
            (
                r#"{ id = "/id" }"#,
                r#""id""#,
                r#"hash_exclude = ["/x"]"#,
                "route[0].hash_exclude",
            ),
            (r#"{ d = "@payload" }"#, r#""d""#, "", "route[0].key"),
        ] {
            let err = map(cols, key, extra).unwrap_err();
            assert!(err.contains(want), "{cols} {key} {extra}: {err}");
        }
    }
}
