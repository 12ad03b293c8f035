//! Stage 1, decode: a message's bytes, read with its route's format and
//! envelope, become one [`Event`] — a row image to write, a row to delete, a
//! tombstone, a truncate, or nothing to do. Pure: no I/O (schema'd formats
//! read writer schemas the pipeline fetched before the batch).
//!
//! Plain JSON on a document route is read as a tree borrowing from the
//! payload (`json::borrowed`): such a route needs only a key, a version and
//! the whole event's hash, and building a `serde_json::Value` per message
//! was a visible share of the profile. Everything else is read as a `Value`.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::debezium::{self, Change, Op};
use crate::config::route::{Route, TombstonePolicy, TruncatePolicy};
use crate::format::connect::{self, ConnectCache, Known};
use crate::format::SchemaSet;
use crate::json::borrowed::BorrowedJson;
use crate::kafka::message::{Poison, PoisonReason, SourceMessage};

/// One message as its route reads it.
pub struct Event<'m> {
    /// The message: position, key (a schema'd key already decoded to its
    /// JSON text), timestamp and headers, which column sources read.
    pub msg: &'m SourceMessage,
    /// A change event's operation (counted per op).
    pub op: Option<Op>,
    pub body: Body<'m>,
    /// The schemas a change event was written with, when it carries them
    /// (tables are created and evolved from them).
    pub schema: Option<EventSchema>,
}

/// A change event's value and key schemas.
#[derive(Clone, Debug)]
pub struct EventSchema {
    pub value: Arc<Known>,
    pub key: Option<Arc<Known>>,
}

/// What the message asks of the route's table.
pub enum Body<'m> {
    /// Insert or update this row image.
    Upsert(Image<'m>),
    /// A change event's delete of the row `row` identifies (its `before`
    /// with the Kafka key's fields laid over it).
    Delete { row: Value, source: Value },
    /// A null value: delete the row the Kafka key names.
    Tombstone,
    /// A change event's truncate of the whole table.
    Truncate { source: Value },
    /// Nothing to write; counted by kind.
    Skip(Skip),
}

/// Messages that are counted and skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A tombstone on a route that ignores them, or the tombstone that
    /// follows every Debezium delete (the delete already did it).
    Tombstone,
    /// A truncate on a route with `on_truncate = "ignore"`.
    Truncate,
}

/// A row image: the event as a JSON tree, its text, and a change event's
/// `source` block.
pub struct Image<'m> {
    pub tree: Tree<'m>,
    /// The image as JSON text: the payload as received (borrowed), or the
    /// decoded record or change event row (owned), which is what the row
    /// stores.
    pub text: Cow<'m, str>,
    pub source: Option<Value>,
}

pub enum Tree<'m> {
    Borrowed(BorrowedJson<'m>),
    Owned(Value),
}

/// Decodes `m` for `route`. A schema'd key is decoded in place first (into
/// its JSON text, which key sources and tombstones read). `connect` holds
/// the Connect schemas embedded change events carried so far; a new one is
/// parsed and added.
pub fn decode<'m>(
    route: &Route,
    m: &'m mut SourceMessage,
    schemas: &SchemaSet,
    connect: &mut ConnectCache,
) -> Result<Event<'m>, Poison> {
    let key_schema = decode_key(route, m, schemas)?;
    let m: &'m SourceMessage = m;
    let event = |op, body| Event {
        msg: m,
        op,
        body,
        schema: None,
    };
    let decoded = decode_value(route, m, schemas)?;
    let Some(payload) = m.payload.as_deref() else {
        return Ok(event(None, tombstone(route)));
    };
    if decoded.is_none() && reads_borrowed(route) {
        if let Some(image) = borrowed(payload) {
            return Ok(event(None, Body::Upsert(image)));
        }
    }
    if decoded.is_none() && route.is_cdc() {
        if let Some(e) = Embedded::of(payload) {
            let (change, schema) = embedded_change(m, e, connect)?;
            let (op, body) = change_body(route, change);
            return Ok(Event {
                schema: Some(schema),
                ..event(Some(op), body)
            });
        }
    }
    let (text, value) = match decoded {
        Some(v) => (Cow::Owned(v.to_string()), v),
        None => parse_json(payload).map_err(|e| (PoisonReason::InvalidJson, e))?,
    };
    if route.is_cdc() {
        // A registry format's change events carry their schema too; a
        // route creating its tables reads values by it.
        let schema = match (
            route.format.is_schemad() && route.from_schema,
            m.payload.as_deref(),
        ) {
            (true, Some(p)) => registry_schema(schemas, p, key_schema)?,
            _ => None,
        };
        let value = match &schema {
            Some(s) => connect::convert(value, &s.value.schema),
            None => value,
        };
        let (op, body) = change(route, m, value)?;
        return Ok(Event {
            schema,
            ..event(Some(op), body)
        });
    }
    let image = Image {
        tree: Tree::Owned(value),
        text,
        source: None,
    };
    Ok(event(None, Body::Upsert(image)))
}

fn tombstone(route: &Route) -> Body<'static> {
    if route.is_cdc() || route.tombstones == TombstonePolicy::Ignore {
        Body::Skip(Skip::Tombstone)
    } else {
        Body::Tombstone
    }
}

/// Decodes a schema'd key in place; for change events, returns its Connect
/// schema.
fn decode_key(
    route: &Route,
    m: &mut SourceMessage,
    schemas: &SchemaSet,
) -> Result<Option<Arc<Known>>, Poison> {
    if !route.key_format.is_schemad() {
        return Ok(None);
    }
    let Some(k) = &m.key else { return Ok(None) };
    let mut key = schemas.decode(route.key_format, k).map_err(schema_poison)?;
    let schema = match schemas.connect_of(k) {
        Some(Ok(known)) if route.is_cdc() && route.from_schema => {
            key = connect::convert(key, &known.schema);
            Some(known)
        }
        _ => None,
    };
    m.key = Some(key_text(&key).into_bytes());
    Ok(schema)
}

/// The Connect schemas of a registry-framed change event (Avro).
fn registry_schema(
    schemas: &SchemaSet,
    payload: &[u8],
    key: Option<Arc<Known>>,
) -> Result<Option<EventSchema>, Poison> {
    match schemas.connect_of(payload) {
        Some(Ok(value)) => Ok(Some(EventSchema { value, key })),
        Some(Err(e)) => Err((PoisonReason::Schema("invalid_schema"), e)),
        None => Ok(None),
    }
}

/// A schema'd value decoded to JSON; `None` for plain JSON and tombstones.
fn decode_value(
    route: &Route,
    m: &SourceMessage,
    schemas: &SchemaSet,
) -> Result<Option<Value>, Poison> {
    match (&m.payload, route.format.is_schemad()) {
        (Some(p), true) => schemas
            .decode(route.format, p)
            .map(Some)
            .map_err(schema_poison),
        _ => Ok(None),
    }
}

fn schema_poison((code, e): (&'static str, String)) -> Poison {
    (PoisonReason::Schema(code), e)
}

/// A decoded key as the text key sources read: strings as is, anything else
/// as JSON (a struct key stays addressable by pointers in tombstones).
fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A plain-JSON document route reads only a key, a version and the whole
/// event's hash: the borrowed tree has all of that. Typed routes, change
/// events and hash exclusions read the `Value`.
pub(super) fn reads_borrowed(route: &Route) -> bool {
    !route.is_cdc() && route.columns.is_none() && route.hash_exclude.is_empty()
}

/// The payload as a borrowed tree, or `None` when it is not UTF-8 JSON the
/// borrowed tree takes: the `Value` path then decides, and names the error.
fn borrowed(payload: &[u8]) -> Option<Image<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    let tree = BorrowedJson::parse(text).ok()?;
    if has_nul_escape(text) {
        return None;
    }
    Some(Image {
        tree: Tree::Borrowed(tree),
        text: Cow::Borrowed(text),
        source: None,
    })
}

/// A Debezium change event: an upsert of `after`, a delete of the row it
/// identifies, or a truncate.
fn change<'m>(route: &Route, m: &SourceMessage, value: Value) -> Result<(Op, Body<'m>), Poison> {
    let key = m
        .key
        .as_deref()
        .and_then(|k| serde_json::from_slice::<Value>(k).ok());
    let change =
        debezium::decode(key.as_ref(), value).map_err(|e| (PoisonReason::InvalidChange, e))?;
    Ok(change_body(route, change))
}

/// The JSON converter's `{"schema": …, "payload": …}`, split without
/// parsing either part.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Embedded<'a> {
    #[serde(borrow)]
    schema: &'a RawValue,
    #[serde(borrow)]
    payload: &'a RawValue,
}

impl<'a> Embedded<'a> {
    fn of(bytes: &'a [u8]) -> Option<Embedded<'a>> {
        serde_json::from_str(std::str::from_utf8(bytes).ok()?).ok()
    }

    /// The payload converted by its schema (parsed once per distinct schema).
    fn read(self, connect: &mut ConnectCache) -> Result<(Value, Arc<Known>), Poison> {
        let known = connect
            .get_or_parse(self.schema.get())
            .map_err(|e| (PoisonReason::InvalidChange, e))?;
        let (_, value) = parse_json(self.payload.get().as_bytes())
            .map_err(|e| (PoisonReason::InvalidJson, e))?;
        Ok((connect::convert(value, &known.schema), known))
    }
}

/// A change event with embedded schemas, and its schemas.
fn embedded_change(
    m: &SourceMessage,
    value: Embedded<'_>,
    connect: &mut ConnectCache,
) -> Result<(Change, EventSchema), Poison> {
    let (key, key_schema) = match m.key.as_deref() {
        Some(k) => match Embedded::of(k) {
            Some(e) => {
                let (v, known) = e.read(connect)?;
                (Some(v), Some(known))
            }
            None => (serde_json::from_slice::<Value>(k).ok(), None),
        },
        None => (None, None),
    };
    let (envelope, value_schema) = value.read(connect)?;
    let change =
        debezium::from_envelope(key, envelope).map_err(|e| (PoisonReason::InvalidChange, e))?;
    let schema = EventSchema {
        value: value_schema,
        key: key_schema,
    };
    Ok((change, schema))
}

/// What a change does to the route's table.
fn change_body<'m>(route: &Route, change: Change) -> (Op, Body<'m>) {
    let body = match change.op {
        Op::Truncate if route.on_truncate == TruncatePolicy::Ignore => Body::Skip(Skip::Truncate),
        Op::Truncate => Body::Truncate {
            source: change.source,
        },
        Op::Delete => Body::Delete {
            row: change.row,
            source: change.source,
        },
        Op::Create | Op::Read | Op::Update => Body::Upsert(Image {
            text: Cow::Owned(change.row.to_string()),
            tree: Tree::Owned(change.row),
            source: Some(change.source),
        }),
    };
    (change.op, body)
}

/// The payload as UTF-8 text and parsed JSON.
fn parse_json(payload: &[u8]) -> Result<(Cow<'_, str>, Value), String> {
    let text = std::str::from_utf8(payload).map_err(|e| format!("payload is not UTF-8: {e}"))?;
    let value = serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))?;
    // jsonb cannot hold U+0000; reject here with a clear message rather than
    // failing the statement.
    if has_nul_escape(text) {
        return Err("payload contains \\u0000, which PostgreSQL jsonb cannot store".into());
    }
    Ok((Cow::Borrowed(text), value))
}

fn has_nul_escape(text: &str) -> bool {
    text.contains("\\u0000")
}
