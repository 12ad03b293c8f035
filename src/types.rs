//! Domain types. Input is parsed into these once ("parse, don't validate") and
//! trusted afterwards, so the rest of the code cannot mix up an offset with a
//! partition number or format an unquoted identifier into SQL.

use std::fmt;
use std::sync::Arc;

/// A Kafka offset. `next_offset` values stored in `sink_offsets` are also
/// offsets: the first offset *not yet* applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub i64);

impl Offset {
    /// The offset after this one: what gets stored once this one is applied.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One partition of one topic: the unit of ordering, ownership and fencing.
/// The topic name is shared (`Arc`): every message carries its partition,
/// and cloning one must not allocate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// The position a consumer believes it owns for one partition of a batch:
/// what the fence compares and sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub tp: TopicPartition,
    /// The stored `next_offset` this consumer planned from; `None` when no
    /// row exists yet (first batch ever for the partition).
    pub expected: Option<Offset>,
    /// The batch end: last offset in the batch + 1.
    pub new_next: Offset,
}

/// A version or a source position: what orders a key's events. User
/// versions are integers; change events' positions are the source's own
/// (`event::position`), a Postgres LSN or a MySQL binlog (file, pos, row)
/// packed into one integer, which needs more than 64 bits.
pub type Version = i128;

/// The Kafka timestamp (ms) of the last event of each partition in a batch.
pub type LastEvents = std::collections::BTreeMap<TopicPartition, i64>;

/// SHA-256 identity of an event's canonical content (see `json/hash.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventHash(pub [u8; 32]);

impl fmt::Debug for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventHash({})", hex::encode(self.0))
    }
}

impl fmt::Display for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The value of a row's conflict key (the `key` column of document tables).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey(pub String);

/// A possibly schema-qualified table name, validated and always rendered quoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// Parses `table` or `schema.table`. Each part may itself be written in
    /// double quotes to contain dots (`"my.schema"."t"`); whatever the part
    /// holds is later quoted, so no content can escape the identifier.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts = split_qualified(s)?;
        match parts.as_slice() {
            [name] => Ok(Self {
                schema: None,
                name: name.clone(),
            }),
            [schema, name] => Ok(Self {
                schema: Some(schema.clone()),
                name: name.clone(),
            }),
            _ => Err(format!(
                "`{s}` must be `table` or `schema.table` (quote parts containing dots)"
            )),
        }
    }

    /// The name as a metric label or log field: `schema.table`, unquoted.
    pub fn label(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The name as SQL: every part double-quoted with embedded quotes doubled.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// Quotes an SQL identifier: `"` around it, inner `"` doubled. NUL bytes are
/// rejected earlier (config validation) because Postgres cannot store them.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn split_qualified(s: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("`{s}` has an unterminated quoted identifier")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(format!("`{s}` has an empty identifier part"));
        }
        if part.contains('\0') {
            return Err(format!("`{s}` contains a NUL byte"));
        }
        if part.len() > 63 {
            return Err(format!(
                "`{part}` is longer than Postgres' 63-byte identifier limit"
            ));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(format!("`{s}`: unexpected `{c}` after a quoted part")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted() {
        let t = TableName::parse("public.orders").unwrap();
        assert_eq!(t.quoted(), r#""public"."orders""#);
        let t = TableName::parse("orders").unwrap();
        assert_eq!(t.quoted(), r#""orders""#);
    }

    #[test]
    fn hostile_identifiers_stay_identifiers() {
        let t = TableName::parse(r#""a"";drop table x;--""#).unwrap();
        assert_eq!(t.name, r#"a";drop table x;--"#);
        assert_eq!(t.quoted(), r#""a"";drop table x;--""#);
        let t = TableName::parse(r#""my.schema"."odd table""#).unwrap();
        assert_eq!(t.schema.as_deref(), Some("my.schema"));
        assert_eq!(t.name, "odd table");
    }

    #[test]
    fn malformed_table_names_are_rejected() {
        for bad in ["", "a..b", "a.b.c", "\"open", "a.", &"x".repeat(64)] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
