//! Stage 2, identity: what row an [`Event`] addresses (its [`RowKey`]), what
//! it says (its [`EventHash`]), and where it stands in order (its version or
//! source position). Pure.
//!
//! * Document routes: the key comes from JSON pointers, the Kafka key, or
//!   the event hash itself; the hash is SHA-256 over the canonical JSON of
//!   the event (`json::hash`), less `hash_exclude`.
//! * Typed routes: the event is projected onto the table's columns
//!   (`event::row`); the key is the key columns' values and the hash covers
//!   the content columns, so "duplicate" means "would not change the row".
//!   The projected row (its COPY line) comes out here too, while the
//!   event's tree is at hand.

use serde_json::Value;

use super::decode::{Body, Event, Image, Skip, Tree};
use super::fold::RowUpsert;
use super::position;
use super::row::EventView;
use crate::config::route::{Route, RowKeySource, SOURCE_POSITION};
use crate::format;
use crate::json::hash::{self, JsonKind, JsonTree};
use crate::json::pointer::JsonPointer;
use crate::kafka::message::{text_of_bytes, Poison, PoisonReason, SourceMessage};
use crate::types::{EventHash, RowKey, Version};

/// An event with its identity: what the fold takes.
#[cfg_attr(test, derive(Debug))]
pub enum Identified {
    Upsert(KeyedRow),
    Delete {
        key: RowKey,
        /// A change event's source position (`None` for tombstones).
        version: Option<Version>,
    },
    /// A truncate at this source position.
    Truncate {
        position: Version,
    },
    Skip(Skip),
}

/// An upsert with its identity; [`Self::into_row`] then moves the message's
/// position and bytes into the row instead of copying them: preparing order
/// events like the bench's took 1,135–1,174 ns each with the copy,
/// 1,054–1,085 ns without (scratch loop, three runs each).
#[cfg_attr(test, derive(Debug))]
pub struct KeyedRow {
    key: RowKey,
    hash: EventHash,
    /// Typed routes: the projected row (`event::row`).
    row: Option<String>,
    version: Option<Version>,
    /// The payload to store; `None`: the message's payload, which decoding
    /// read as UTF-8.
    text: Option<String>,
}

impl KeyedRow {
    pub fn into_row(self, m: SourceMessage) -> RowUpsert {
        let payload = match self.text {
            Some(text) => text,
            None => String::from_utf8(m.payload.unwrap_or_default())
                .expect("an upsert's payload was decoded as UTF-8"),
        };
        RowUpsert {
            key: self.key,
            hash: self.hash,
            payload,
            row: self.row,
            version: self.version,
            tp: m.tp,
            offset: m.offset,
        }
    }
}

/// The identity of `event` on `route`.
pub fn identify(route: &Route, event: Event<'_>) -> Result<Identified, Poison> {
    let m = event.msg;
    match event.body {
        Body::Skip(s) => Ok(Identified::Skip(s)),
        Body::Upsert(image) => upsert(route, m, image).map(Identified::Upsert),
        Body::Tombstone => Ok(Identified::Delete {
            key: match &route.columns {
                Some(map) => map.tombstone_key(m)?,
                None => tombstone_key(route, m.key.as_deref())?,
            },
            version: None,
        }),
        Body::Delete { row, source } => {
            let version = version_of(route, m, &row, Some(&source))?;
            let key = match &route.columns {
                Some(map) => map.key_of(&row, Some(&source))?,
                None => document_key_and_hash(route, m, &row)?.0,
            };
            Ok(Identified::Delete { key, version })
        }
        Body::Truncate { source } => {
            let version = version_of(route, m, &Value::Null, Some(&source))?;
            Ok(Identified::Truncate {
                position: version.unwrap_or(Version::MAX),
            })
        }
    }
}

/// The identity of a row image to upsert.
fn upsert(route: &Route, m: &SourceMessage, image: Image<'_>) -> Result<KeyedRow, Poison> {
    let (key, hash, row, version) = match &image.tree {
        Tree::Borrowed(tree) => {
            let version = version_of(route, m, tree, None)?;
            let key = document_key(route, m, tree)?;
            let h = hash::hash_value(tree);
            (
                key.unwrap_or_else(|| RowKey(h.to_string())),
                h,
                None,
                version,
            )
        }
        Tree::Owned(value) => {
            let source = image.source.as_ref();
            let version = version_of(route, m, value, source)?;
            match &route.columns {
                Some(map) => {
                    let ev = EventView {
                        msg: m,
                        text: &image.text,
                        value,
                        source,
                    };
                    let r = map.row(&ev, &route.hash_exclude)?;
                    (r.key, r.content_hash, Some(r.doc), version)
                }
                None => {
                    let (k, h) = document_key_and_hash(route, m, value)?;
                    (k, h, None, version)
                }
            }
        }
    };
    Ok(KeyedRow {
        key,
        hash,
        row,
        version,
        text: match image.text {
            std::borrow::Cow::Owned(text) => Some(text),
            std::borrow::Cow::Borrowed(_) => None,
        },
    })
}

/// The route's version (or source position) of an event; an error when the
/// route has one and the event does not carry it as an integer.
fn version_of<T: JsonTree>(
    route: &Route,
    m: &SourceMessage,
    value: &T,
    source: Option<&Value>,
) -> Result<Option<Version>, Poison> {
    let Some(p) = &route.version else {
        return Ok(None);
    };
    let bad = |e: String| (PoisonReason::BadVersion, e);
    let found = match (p.strip_prefix("@source:"), &route.version_pointer) {
        (Some(SOURCE_POSITION), _) => {
            let source = source.ok_or_else(|| bad("the event has no source block".into()))?;
            return position::of(source, m.offset, m.source_commit)
                .map(Some)
                .map_err(bad);
        }
        (Some(field), _) => source.and_then(|s| s.get(field)).and_then(as_integer),
        (None, Some(pointer)) => pointer.get(value).and_then(as_integer),
        (None, None) => None,
    };
    match found {
        // Kept as `bigint`: a wider number would fail the whole batch.
        Some(v) if i64::try_from(v).is_ok() => Ok(Some(v)),
        Some(v) => Err(bad(format!("version {p} = {v} does not fit a bigint"))),
        None => Err(bad(format!("version {p} is missing or not an integer"))),
    }
}

/// A version: an integer number, or a string holding one.
fn as_integer<T: JsonTree + ?Sized>(v: &T) -> Option<Version> {
    match v.kind() {
        JsonKind::Number => v.as_i64().map(Version::from),
        JsonKind::String => v.as_str()?.parse().ok(),
        _ => None,
    }
}

/// A document route's row key, unless it is the event hash (`None`).
fn document_key<T: JsonTree>(
    route: &Route,
    m: &SourceMessage,
    value: &T,
) -> Result<Option<RowKey>, Poison> {
    Ok(match &route.key {
        RowKeySource::Pointers(ps) => Some(key_from_pointers(value, ps)?),
        RowKeySource::KafkaKey => match m.key.as_deref() {
            Some(k) => Some(RowKey(text_of_bytes(k))),
            None => return Err((PoisonReason::MissingKey, "message has no Kafka key".into())),
        },
        RowKeySource::EventHash | RowKeySource::Columns(_) => None,
    })
}

/// A document route's row key and event hash.
fn document_key_and_hash(
    route: &Route,
    m: &SourceMessage,
    value: &Value,
) -> Result<(RowKey, EventHash), Poison> {
    let key = document_key(route, m, value)?;
    // The value is copied only when the hashed view differs from it (a
    // whole-tree clone per message was a visible share of the profile).
    let h = if route.format.is_schemad() {
        // Absent and null are the same in a schema'd record: an event encoded
        // under a version with an added (null) field is still a duplicate.
        let mut view = format::hash_view(value);
        hash::remove_pointers(&mut view, &route.hash_exclude);
        hash::hash_value(&view)
    } else if route.hash_exclude.is_empty() {
        hash::hash_value(value)
    } else {
        let mut view = value.clone();
        hash::remove_pointers(&mut view, &route.hash_exclude);
        hash::hash_value(&view)
    };
    Ok((key.unwrap_or_else(|| RowKey(h.to_string())), h))
}

/// Renders the row key from JSON pointers: one string value is used as is,
/// other scalars (numbers, booleans) and several pointers as canonical JSON,
/// so `1` and `1.0` are the same key and composite keys cannot collide by
/// concatenation. Objects and arrays are not keys.
pub fn key_from_pointers<T: JsonTree>(
    value: &T,
    pointers: &[JsonPointer],
) -> Result<RowKey, Poison> {
    let mut parts = Vec::with_capacity(pointers.len());
    for p in pointers {
        let Some(v) = p.get(value).filter(|v| v.kind() != JsonKind::Null) else {
            return Err((
                PoisonReason::MissingKey,
                format!("key pointer {p} is missing or null"),
            ));
        };
        if matches!(v.kind(), JsonKind::Object | JsonKind::Array) {
            return Err((
                PoisonReason::InvalidKey,
                format!(
                    "key pointer {p} holds {}; keys must be strings, numbers or booleans",
                    hash::json_kind(v)
                ),
            ));
        }
        parts.push(v);
    }
    Ok(RowKey(match parts.as_slice() {
        [v] => match v.as_str() {
            Some(s) => s.to_string(),
            None => hash::canonical_string(*v),
        },
        many => {
            // The canonical form of the array of parts.
            let mut text = Vec::new();
            hash::write_array(many.iter().copied(), &mut text);
            String::from_utf8(text).expect("canonical JSON is UTF-8")
        }
    }))
}

/// The key a tombstone deletes. Pointer-keyed routes read the pointers from
/// the Kafka key parsed as JSON (e.g. `{"order_id": 7}`), or, with a single
/// pointer, take the Kafka key text itself.
fn tombstone_key(route: &Route, key: Option<&[u8]>) -> Result<RowKey, Poison> {
    let missing = |e: &str| (PoisonReason::MissingKey, e.to_string());
    let Some(k) = key else {
        return Err(missing("tombstone without a Kafka key"));
    };
    match &route.key {
        RowKeySource::KafkaKey => Ok(RowKey(text_of_bytes(k))),
        RowKeySource::EventHash => Err(missing(
            "tombstones cannot address rows keyed by @event_hash",
        )),
        RowKeySource::Columns(_) => unreachable!("typed routes derive keys in event::row"),
        RowKeySource::Pointers(ps) => {
            if let Ok(v) = serde_json::from_slice::<Value>(k) {
                if let Ok(rk) = key_from_pointers(&v, ps) {
                    return Ok(rk);
                }
            }
            if ps.len() == 1 {
                Ok(RowKey(text_of_bytes(k)))
            } else {
                Err(missing(
                    "tombstone key is not a JSON object holding the key pointers",
                ))
            }
        }
    }
}
