//! `config from-connect`: a Kafka Connect JDBC sink connector's configuration
//! translated into kafka-pg-sink's TOML. Pure: no file, no server.
//!
//! Two connectors are read: Debezium's JDBC sink
//! (`io.debezium.connector.jdbc.JdbcSinkConnector`, 2.x and 3.x option names)
//! and Confluent's (`io.confluent.connect.jdbc.JdbcSinkConnector`). The input
//! is what Connect's REST API shows — `{"name": …, "config": {…}}`, the flat
//! config map (`GET /connectors/<name>/config`, or a `.properties` file read
//! by [`parse_properties`]), or the `?expand=info` listing of one connector.
//!
//! What the topics hold decides the route's envelope. Debezium's sink reads
//! Debezium change events; so does any sink whose `transforms` include
//! `ExtractNewRecordState`: a sink connector's transforms run inside Connect
//! after the records are read, so the topic still holds the change events
//! and kafka-pg-sink reads them as they are (`envelope = "debezium"`), with
//! their source positions and deletes. Otherwise the values are rows
//! (`envelope = "none"`).
//!
//! Every option is either translated or named in [`Translation::notes`] with
//! the reason it has no equivalent; secrets (passwords, JAAS configurations,
//! registry credentials) are never copied into the output.
//!
//! The pieces: `input` reads the connector, `converters` the record
//! formats and transforms, `routes` and `route` the `[[route]]`s (with the
//! name rules in `names`), `sections` the `[kafka]`, `[postgres]`, `[batch]`
//! and `[sink]` sections (the JDBC URL in `jdbc`), `notes` the options that
//! need no equivalent; `text` writes TOML.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

mod converters;
mod input;
mod jdbc;
mod names;
mod notes;
mod route;
mod routes;
mod sections;
#[cfg(test)]
mod tests;
mod text;

pub use input::{parse_connector, parse_properties};

use input::Input;
use notes::is_secret;
use route::render_route;
use text::comment;

/// The TOML and what did not translate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// A kafka-pg-sink configuration; loads with `Config::load` as it is
    /// (the brokers are a placeholder unless the connector overrides them).
    pub toml: String,
    /// One line per option that was not translated or needs no equivalent:
    /// `option=value: reason`.
    pub notes: Vec<String>,
}

/// The connectors this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    Debezium,
    Confluent,
}

pub const DEBEZIUM_JDBC_SINK: &str = "io.debezium.connector.jdbc.JdbcSinkConnector";
pub const CONFLUENT_JDBC_SINK: &str = "io.confluent.connect.jdbc.JdbcSinkConnector";

/// The placeholder written when the connector does not name the brokers
/// (they are the Connect worker's `bootstrap.servers`).
pub const BROKERS_PLACEHOLDER: &str = "CHANGE-ME:9092";

/// Which connector `connector` configures, or why it is not one this
/// module translates (a clear sentence for the command line).
pub fn sink_kind(connector: &Value) -> Result<SinkKind, String> {
    Input::read(connector).map(|i| i.kind)
}

/// Translates a connector configuration (see the module docs). An input
/// that is not a PostgreSQL JDBC sink configuration gives an empty `toml`
/// and the reason as its only note ([`sink_kind`] tells beforehand).
pub fn translate(connector: &Value) -> Translation {
    match Input::read(connector) {
        Ok(input) => Translator::new(input).run(),
        Err(e) => Translation {
            toml: String::new(),
            notes: vec![e],
        },
    }
}

impl SinkKind {
    fn class(self) -> &'static str {
        match self {
            SinkKind::Debezium => DEBEZIUM_JDBC_SINK,
            SinkKind::Confluent => CONFLUENT_JDBC_SINK,
        }
    }
}

/// The translation under way: the options, which of them are translated,
/// and the notes so far.
struct Translator {
    name: Option<String>,
    kind: SinkKind,
    options: BTreeMap<String, String>,
    used: BTreeSet<String>,
    notes: Vec<String>,
    /// Comments written once, before the routes.
    preamble: Vec<String>,
}

impl Translator {
    fn new(input: Input) -> Self {
        let mut t = Self {
            name: input.name,
            kind: input.kind,
            options: input.options,
            used: BTreeSet::new(),
            notes: Vec::new(),
            preamble: Vec::new(),
        };
        t.used.insert("name".into());
        t.used.insert("connector.class".into());
        t
    }

    /// The option's value (trimmed), marking it translated.
    fn take(&mut self, key: &str) -> Option<String> {
        let v = self.options.get(key)?.trim().to_string();
        self.used.insert(key.to_string());
        Some(v)
    }

    /// The first of several spellings (Debezium 3.x name, then its 2.x alias).
    fn take_any(&mut self, keys: &[&str]) -> Option<String> {
        let mut found = None;
        for k in keys {
            if let Some(v) = self.take(k) {
                found.get_or_insert(v);
            }
        }
        found
    }

    fn take_bool(&mut self, keys: &[&str], default: bool) -> bool {
        match self.take_any(keys) {
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            _ => default,
        }
    }

    /// The option's comma-separated items (none when it is not set).
    fn take_list(&mut self, key: &str) -> Vec<String> {
        split_list(&self.take(key).unwrap_or_default())
    }

    fn note(&mut self, what: &str, why: &str) {
        self.notes.push(format!("{what}: {why}"));
    }

    /// `key=value: why` for an option that is set.
    fn note_option(&mut self, key: &str, why: &str) {
        let shown = match self.options.get(key) {
            Some(_) if is_secret(key) => format!("{key}=***"),
            Some(v) => format!("{key}={}", v.trim()),
            None => key.to_string(),
        };
        self.used.insert(key.to_string());
        self.notes.push(format!("{shown}: {why}"));
    }

    /// Keys starting with `prefix`, in order.
    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.options
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Keys starting with `prefix` that are not translated yet, in order.
    fn unused_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.options
            .keys()
            .filter(|k| k.starts_with(prefix) && !self.used.contains(*k))
            .cloned()
            .collect()
    }

    fn run(mut self) -> Translation {
        let formats = self.formats();
        let transforms = self.transforms();
        let cdc = self.kind == SinkKind::Debezium || transforms.unwrap;
        let routes = self.routes(cdc, &formats, &transforms);
        let kafka = self.kafka_section();
        let postgres = self.postgres_section();
        let rest = self.batch_and_sink();
        self.known_notes();
        self.unknown_notes();

        let mut out = self.header();
        out.push_str(&kafka);
        out.push_str(&postgres);
        out.push_str(&rest);
        if let Some(r) = &formats.registry {
            out.push_str(&r.section());
        }
        for c in &self.preamble {
            comment(&mut out, c);
        }
        if !self.preamble.is_empty() {
            out.push('\n');
        }
        for r in &routes {
            out.push_str(&render_route(r));
        }
        let mut notes: Vec<String> = Vec::new();
        for n in self.notes {
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
        Translation { toml: out, notes }
    }

    /// The comment that opens the output: where it comes from.
    fn header(&self) -> String {
        let connector = match &self.name {
            Some(n) => format!("`{n}`"),
            None => "(unnamed)".to_string(),
        };
        let class = self.kind.class();
        format!(
            "# Translated from the Kafka Connect connector {connector} ({class})\n\
             # by `kafka-pg-sink config from-connect`. Check it with\n\
             # `kafka-pg-sink --config <this file> check-config`; docs/migrate-from-connect.md\n\
             # explains each choice.\n\n"
        )
    }
}

/// The items of a comma-separated value, trimmed, empty ones left out.
fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}
