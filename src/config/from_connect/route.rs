//! One `[[route]]`: a topic (or `topics.regex`) with its table, from what
//! every route of the connector shares, and its TOML.

use std::fmt::Write as _;

use super::converters::Formats;
use super::names::{
    fold_literal_case, pointer_escape, split_outside_placeholders, subscription_regex, PLACEHOLDER,
};
use super::text::{comment, key, q};
use super::{SinkKind, Translator};

/// The row key as the connector defines it.
pub(super) enum KeyPlan {
    /// The Kafka key's fields (change events: the source's primary key).
    FromKafkaKey,
    /// These fields.
    Fields(Vec<String>),
    /// No key: every record is its own row.
    None,
    /// The Kafka coordinates.
    Coordinates,
}

/// What every route of the connector shares.
pub(super) struct RouteCtx<'a> {
    pub(super) cdc: bool,
    pub(super) formats: &'a Formats,
    pub(super) key: &'a KeyPlan,
    /// Tables from the events' or the registry's schemas.
    pub(super) create: bool,
    pub(super) evolve: bool,
    pub(super) delete_enabled: bool,
    pub(super) truncate: bool,
    pub(super) format_text: &'a str,
    /// `${topic}` keeps its dots (Debezium's passthrough strategy, Confluent).
    pub(super) passthrough: bool,
    pub(super) fold_case: bool,
    pub(super) schema: Option<&'a str>,
    pub(super) whitelist: &'a [String],
}

impl RouteCtx<'_> {
    /// What a tombstone does to a row route's table.
    fn tombstones(&self) -> Option<&'static str> {
        Some(if self.delete_enabled {
            "delete"
        } else {
            "ignore"
        })
    }
}

/// A route as it is written.
pub(super) struct RouteOut {
    comments: Vec<String>,
    topic: String,
    table: String,
    key: Option<Vec<String>>,
    envelope_debezium: bool,
    format: &'static str,
    key_format: &'static str,
    create_table: bool,
    evolve: bool,
    tombstones: Option<&'static str>,
    on_truncate: Option<&'static str>,
    columns: Option<Vec<(String, String)>>,
}

impl RouteOut {
    /// A route of rows with the formats and nothing else set.
    fn new(topic: String, table: String, formats: &Formats) -> Self {
        RouteOut {
            comments: Vec::new(),
            topic,
            table,
            key: None,
            envelope_debezium: false,
            format: formats.value,
            key_format: formats.key,
            create_table: false,
            evolve: false,
            tombstones: None,
            on_truncate: None,
            columns: None,
        }
    }
}

impl Translator {
    pub(super) fn topic_route(&mut self, topic: &str, named: &str, c: &RouteCtx<'_>) -> RouteOut {
        let mut rendered = if c.passthrough {
            c.format_text.replace("${topic}", named)
        } else {
            c.format_text.replace("${topic}", &named.replace('.', "_"))
        };
        if c.fold_case {
            rendered = fold_literal_case(&rendered);
        }
        let mut table = self.qualify(&rendered, c.schema);
        if table.contains(PLACEHOLDER) && !c.cdc {
            self.note(
                &format!("table for {topic}"),
                "`${source.…}` placeholders need change events; the topic name is used",
            );
            table = self.qualify(named, c.schema);
        }
        self.finish_route(topic.to_string(), table, c)
    }

    pub(super) fn regex_route(&mut self, re: &str, c: &RouteCtx<'_>) -> RouteOut {
        let topic = subscription_regex(re);
        if regex::Regex::new(&topic).is_err() {
            self.note(
                &format!("topics.regex={re}"),
                "Java regex syntax the sink's regex engine does not accept: rewrite it",
            );
        }
        let mut table = c.format_text.to_string();
        if table.contains("${topic}") && !c.passthrough {
            self.note(
                "collection.name.format ${topic} with topics.regex",
                "the Debezium sink replaced the topic's dots with `_`; kafka-pg-sink keeps \
                 the topic as the name (`shop.public.items` is one table name); for the same \
                 names from a Postgres source use `${source.name}_${source.schema}_${source.table}`",
            );
        }
        if c.fold_case {
            table = fold_literal_case(&table);
        }
        table = self.qualify(&table, c.schema);
        if !table.contains(PLACEHOLDER) {
            self.note(
                &format!("table {table} for topics.regex"),
                "every topic the regex matches would write this one table; kafka-pg-sink \
                 keeps one source per table: add a placeholder (`${source.table}`, `${topic}`)",
            );
        }
        if c.cdc {
            return self.finish_route(topic, table, c);
        }
        if c.create || matches!(c.key, KeyPlan::Fields(_)) {
            self.note(
                "topics.regex",
                "typed tables (create_table, columns) fit one topic each: list the topics in \
                 `topics` for them; this route writes document tables",
            );
        }
        self.document_route(topic, table, c)
    }

    /// `schema.table` from a rendered name: `currentSchema` for an unqualified
    /// one; a three-part name (`catalog.schema.table`) loses its catalog.
    fn qualify(&mut self, name: &str, schema: Option<&str>) -> String {
        let parts = split_outside_placeholders(name);
        match parts.len() {
            1 => match schema {
                Some(s) if s != "public" => format!("{s}.{name}"),
                _ => name.to_string(),
            },
            2 => name.to_string(),
            _ => {
                let n = parts.len();
                let kept = format!("{}.{}", parts[n - 2], parts[n - 1]);
                self.note(
                    &format!("table name {name}"),
                    &format!(
                        "read as catalog.schema.table, as the Connect sink does: written to {kept}"
                    ),
                );
                kept
            }
        }
    }

    fn finish_route(&mut self, topic: String, table: String, c: &RouteCtx<'_>) -> RouteOut {
        if c.cdc {
            return self.change_event_route(topic, table, c);
        }
        match (c.key, c.create) {
            (KeyPlan::Fields(f), true) => RouteOut {
                key: Some(f.clone()),
                create_table: true,
                evolve: c.evolve,
                tombstones: c.tombstones(),
                ..RouteOut::new(topic, table, c.formats)
            },
            (KeyPlan::Fields(f), false) => typed_route(topic, table, f, c),
            _ => self.document_route(topic, table, c),
        }
    }

    /// A route of change events: the table is created from them.
    fn change_event_route(&mut self, topic: String, table: String, c: &RouteCtx<'_>) -> RouteOut {
        if self.preamble.is_empty() {
            if self.kind == SinkKind::Debezium {
                self.preamble.push(
                    "The topics hold Debezium change events (the Debezium JDBC sink reads \
                     them). If the source connector flattened them (ExtractNewRecordState), \
                     use envelope = \"none\" with a registry format and a key."
                        .into(),
                );
            }
            self.preamble.push(
                "Tables the Connect sink wrote have no source position column: \
                 evolve = \"add_columns\" adds `__source_position`; without it, add the \
                 column first (ALTER TABLE … ADD COLUMN __source_position bigint)."
                    .into(),
            );
        }
        let key = match c.key {
            KeyPlan::Fields(f) => Some(f.clone()),
            _ => None,
        };
        RouteOut {
            key,
            envelope_debezium: true,
            create_table: true,
            evolve: c.evolve,
            on_truncate: Some(if c.truncate { "apply" } else { "ignore" }),
            ..RouteOut::new(topic, table, c.formats)
        }
    }

    /// A document table (`key`, `payload jsonb`, …) created by `setup`.
    fn document_route(&mut self, topic: String, table: String, c: &RouteCtx<'_>) -> RouteOut {
        if c.create && matches!(c.key, KeyPlan::FromKafkaKey) {
            let (mode_key, fields_key) = self.key_options();
            self.note(
                &format!("{mode_key}=record_key without {fields_key}"),
                "the key's field names are not in the configuration: name them in `key` with \
                 create_table = true for a typed table; this route writes a document table \
                 keyed by @kafka_key",
            );
        }
        let key = match c.key {
            KeyPlan::FromKafkaKey => vec!["@kafka_key".to_string()],
            KeyPlan::Fields(f) if !f.is_empty() => f
                .iter()
                .map(|x| format!("/{}", pointer_escape(x)))
                .collect(),
            _ => vec!["@event_hash".to_string()],
        };
        RouteOut {
            comments: vec![
                "A document table (key, payload jsonb, …), created by `setup`: the \
                 connector's typed columns cannot be derived from these values."
                    .into(),
            ],
            key: Some(key),
            tombstones: c.tombstones(),
            ..RouteOut::new(topic, table, c.formats)
        }
    }
}

/// A route of rows into an existing table: the key's (and
/// `fields.whitelist`'s) columns mapped, the others left to fill in.
fn typed_route(topic: String, table: String, fields: &[String], c: &RouteCtx<'_>) -> RouteOut {
    let prefix = if c.formats.embedded_schemas {
        "/payload/"
    } else {
        "/"
    };
    let mut columns: Vec<(String, String)> = Vec::new();
    for name in fields.iter().chain(c.whitelist.iter()) {
        if !columns.iter().any(|(n, _)| n == name) {
            columns.push((name.clone(), format!("{prefix}{}", pointer_escape(name))));
        }
    }
    let mut comments = vec![format!(
        "Only the key{} columns are known from the connector: map every other \
         column of {table} (`name = \"{prefix}name\"`).",
        if c.whitelist.is_empty() {
            ""
        } else {
            " and fields.whitelist"
        }
    )];
    if c.formats.embedded_schemas {
        comments.push(
            "The JSON converter embeds schemas: fields are under /payload; \
             temporal and decimal fields arrive in Connect's encodings \
             (numbers, base64)."
                .into(),
        );
    }
    RouteOut {
        comments,
        key: Some(fields.to_vec()),
        tombstones: c.tombstones(),
        columns: Some(columns),
        ..RouteOut::new(topic, table, c.formats)
    }
}

pub(super) fn render_route(r: &RouteOut) -> String {
    let mut out = String::new();
    for c in &r.comments {
        comment(&mut out, c);
    }
    out.push_str("[[route]]\n");
    let _ = writeln!(out, "topic = {}", q(&r.topic));
    let _ = writeln!(out, "table = {}", q(&r.table));
    if r.envelope_debezium {
        out.push_str("envelope = \"debezium\"\n");
    }
    if r.format != "json" {
        let _ = writeln!(out, "format = {}", q(r.format));
    }
    if r.key_format != "json" {
        let _ = writeln!(out, "key_format = {}", q(r.key_format));
    }
    match &r.key {
        Some(k) if k.len() == 1 => {
            let _ = writeln!(out, "key = {}", q(&k[0]));
        }
        Some(k) => {
            let items: Vec<String> = k.iter().map(|s| q(s)).collect();
            let _ = writeln!(out, "key = [{}]", items.join(", "));
        }
        None if r.envelope_debezium => {
            out.push_str("# key: the Kafka key's fields (the source's primary key)\n");
        }
        None => {}
    }
    if r.create_table {
        out.push_str("create_table = true\n");
    }
    if r.evolve {
        out.push_str("evolve = \"add_columns\"\n");
    }
    if let Some(t) = r.tombstones {
        let _ = writeln!(out, "tombstones = {}", q(t));
    }
    if let Some(t) = r.on_truncate {
        let _ = writeln!(out, "on_truncate = {}", q(t));
    }
    if let Some(cols) = &r.columns {
        let items: Vec<String> = cols
            .iter()
            .map(|(n, p)| format!("{} = {}", key(n), q(p)))
            .collect();
        let _ = writeln!(out, "columns = {{ {} }}", items.join(", "));
    }
    out.push('\n');
    out
}
