//! Typed column mapping: `columns = { order_id = "/order_id", amount = "/amount" }`
//! writes events into an existing typed table. This module is the mapping as
//! configured and as resolved against the catalog; `event::row` projects
//! events onto it and `store::typed` writes the rows.
//!
//! Rust does not convert types: Postgres does, against the column types it
//! reported at startup (`store::schema`), so every type with a text or JSON
//! input works the way Postgres defines it: numeric, timestamptz, uuid,
//! jsonb, arrays, composites, domains. A value that does not convert is
//! isolated and dead-lettered with the column and value named.
//!
//! Dedup in typed tables is by content. An event is a duplicate when it would
//! not change any mapped column except the source-position columns
//! (`@kafka_topic`, `@kafka_partition`, `@kafka_offset`, `@kafka_timestamp`).
//! Those columns differ between re-deliveries of one event. They are written
//! whenever the content changes and never cause an update on their own, just
//! like the position columns of document tables. The in-batch fold hashes the
//! same content values, so both stages agree on what a duplicate is.

use std::collections::BTreeMap;

use crate::json::pointer::JsonPointer;
use crate::types::quote_ident;

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

/// How a JSON value becomes the column's text input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// Text input of the type: strings as they are, numbers and booleans as
    /// their JSON text, objects and arrays as JSON text.
    Scalar,
    /// `json`/`jsonb` (or a domain over them): the value's JSON text.
    Json,
    /// An array type: a JSON array becomes an array literal.
    Array,
    /// Composite types (or arrays of them): JSON objects map to fields by
    /// name, which only Postgres's `jsonb_to_record` does; such routes are
    /// converted server side.
    Structured,
}

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
    /// Whether rows travel as COPY text (every column takes its value as
    /// text); otherwise as JSON converted by `jsonb_to_record` server side.
    pub fn copyable(&self) -> bool {
        self.columns
            .iter()
            .all(|c| c.sql_type.kind != ColumnKind::Structured)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_routes;

    fn map(columns: &str, key: &str, extra: &str) -> Result<(), String> {
        test_routes(&format!(
            "topic = \"t\"\ntable = \"t\"\nkey = {key}\ncolumns = {columns}\n{extra}"
        ))
        .map(|_| ())
        .map_err(|e| e.to_string())
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
