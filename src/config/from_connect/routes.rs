//! The routes of a connector: what they share (key, DDL, deletes, the table
//! name format, identifier case, the schema) and one per topic, or one for
//! `topics.regex`.

use super::converters::{Formats, Transforms};
use super::jdbc::percent_decode;
use super::names::{route_topic, SOURCE_PLACEHOLDER};
use super::route::{KeyPlan, RouteCtx, RouteOut};
use super::{SinkKind, Translator};

impl Translator {
    pub(super) fn routes(
        &mut self,
        cdc: bool,
        formats: &Formats,
        transforms: &Transforms,
    ) -> Vec<RouteOut> {
        let key = self.key_plan(cdc);
        let (create, evolve) = self.schema_options(cdc, formats);
        let delete_enabled = self.take_bool(&["delete.enabled"], false);
        if cdc && !delete_enabled {
            self.note(
                "delete.enabled=false",
                "kafka-pg-sink applies every change event's delete (the Connect sink ignored \
                 them): rows deleted at the source are deleted here",
            );
        }
        let truncate = self.take_bool(&["truncate.enabled"], false);
        let (format_text, passthrough) = self.table_format();
        let fold_case = self.fold_case(&format_text);
        let schema = self.current_schema();
        let whitelist = self.take_list("fields.whitelist");
        let ctx = RouteCtx {
            cdc,
            formats,
            key: &key,
            create,
            evolve,
            delete_enabled,
            truncate,
            format_text: &format_text,
            passthrough,
            fold_case,
            schema: schema.as_deref(),
            whitelist: &whitelist,
        };
        if let Some(re) = self.take("topics.regex") {
            if !transforms.routers.is_empty() {
                self.note(
                    "transforms (RegexRouter)",
                    "renames topics that are only known at run time (topics.regex): the \
                     table is named from the topic as it is; use `${source.table}` \
                     placeholders, or list the topics",
                );
            }
            vec![self.regex_route(&re, &ctx)]
        } else {
            self.take_list("topics")
                .iter()
                .map(|t| {
                    let named = route_topic(t, &transforms.routers);
                    self.topic_route(t, &named, &ctx)
                })
                .collect()
        }
    }

    /// Whether names are folded to lower case as Postgres folded the
    /// Connect sink's unquoted identifiers.
    fn fold_case(&mut self, format_text: &str) -> bool {
        let debezium = self.kind == SinkKind::Debezium;
        let quote = if debezium {
            self.take_bool(&["quote.identifiers"], false)
        } else {
            !self
                .take("quote.sql.identifiers")
                .is_some_and(|v| v.eq_ignore_ascii_case("never"))
        };
        let fold_case = !quote;
        let quote_set = self.options.contains_key("quote.identifiers")
            || self.options.contains_key("quote.sql.identifiers");
        if fold_case && (quote_set || format_text.contains(SOURCE_PLACEHOLDER)) {
            self.note(
                if debezium {
                    "quote.identifiers=false"
                } else {
                    "quote.sql.identifiers=never"
                },
                "Postgres folded the Connect sink's unquoted names to lower case; kafka-pg-sink \
                 quotes every identifier, so names keep their case (a source table `Orders` \
                 and its columns are written as \"Orders\"); names rendered from the topic \
                 below are already lower-cased",
            );
        } else if quote_set {
            let k = if debezium {
                "quote.identifiers"
            } else {
                "quote.sql.identifiers"
            };
            self.note_option(k, "identifiers are always quoted");
        }
        fold_case
    }

    /// `(create_table, evolve)` from the connector's DDL options.
    fn schema_options(&mut self, cdc: bool, formats: &Formats) -> (bool, bool) {
        let (create, evolve) = match self.kind {
            SinkKind::Debezium => {
                let mode = self
                    .take("schema.evolution")
                    .unwrap_or_else(|| "none".into());
                let basic = mode.eq_ignore_ascii_case("basic");
                if !basic {
                    self.note(
                        &format!("schema.evolution={mode}"),
                        "create_table = true still creates a missing table from the change \
                         events (the Debezium sink would fail); an existing table must match \
                         them (no evolve)",
                    );
                }
                (true, basic)
            }
            SinkKind::Confluent => {
                let create = self.take_bool(&["auto.create"], false);
                let evolve = self.take_bool(&["auto.evolve"], false);
                (create, evolve)
            }
        };
        // What kafka-pg-sink can create from: change events with schemas, or a registry format.
        let can_create = cdc || formats.value != "json";
        if self.kind == SinkKind::Confluent && can_create && !create {
            self.note(
                "auto.create=false",
                "create_table = true: the columns come from the schema; a missing table is \
                 created, an existing one is checked against it",
            );
        }
        if self.kind == SinkKind::Confluent && !can_create && (create || evolve) {
            self.note(
                "auto.create/auto.evolve",
                "tables are created from change events or registry schemas only; these \
                 values are JSON rows: create the table, then map its columns",
            );
        }
        (can_create, evolve && can_create)
    }

    /// The options of the key's mode and fields.
    pub(super) fn key_options(&self) -> (&'static str, &'static str) {
        match self.kind {
            SinkKind::Debezium => ("primary.key.mode", "primary.key.fields"),
            SinkKind::Confluent => ("pk.mode", "pk.fields"),
        }
    }

    fn key_plan(&mut self, cdc: bool) -> KeyPlan {
        let (mode_key, fields_key) = self.key_options();
        let mode = self
            .take(mode_key)
            .unwrap_or_else(|| "none".into())
            .to_ascii_lowercase();
        let fields = self.take_list(fields_key);
        match mode.as_str() {
            "record_key" | "record_value" if !fields.is_empty() => return KeyPlan::Fields(fields),
            "record_key" => return KeyPlan::FromKafkaKey,
            _ => {}
        }
        let what = if mode == "record_value" {
            format!("{mode_key}=record_value without {fields_key}")
        } else {
            format!("{mode_key}={mode}")
        };
        let (why, plan) = substitute_key(&mode, cdc);
        self.note(&what, why);
        plan
    }

    /// The table name format and whether `${topic}` keeps its dots.
    fn table_format(&mut self) -> (String, bool) {
        match self.kind {
            SinkKind::Debezium => {
                let format = self
                    .take_any(&["collection.name.format", "table.name.format"])
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| "${topic}".into());
                let strategy =
                    self.take_any(&["collection.naming.strategy", "table.naming.strategy"]);
                let passthrough = match strategy.as_deref() {
                    None
                    | Some("io.debezium.sink.naming.DefaultCollectionNamingStrategy")
                    | Some("io.debezium.connector.jdbc.naming.DefaultTableNamingStrategy") => false,
                    Some("io.debezium.sink.naming.PassthroughCollectionNamingStrategy") => true,
                    Some(other) => {
                        self.note(
                            &format!("collection.naming.strategy={other}"),
                            "a custom naming strategy is not run: tables are named by the \
                             format with the default strategy's rules",
                        );
                        false
                    }
                };
                (format, passthrough)
            }
            SinkKind::Confluent => {
                let format = self
                    .take("table.name.format")
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| "${topic}".into());
                (format, true)
            }
        }
    }

    /// PgJDBC's `currentSchema` (read again by `postgres_section`).
    fn current_schema(&self) -> Option<String> {
        let url = self.options.get("connection.url")?;
        let (_, query) = url.split_once('?')?;
        query.split('&').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k == "currentSchema")
                .then(|| {
                    percent_decode(v)
                        .split(',')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .filter(|s| !s.is_empty())
        })
    }
}

/// For a key mode kafka-pg-sink does not reproduce (lower case; not
/// `record_key` or `record_value` with fields): why, and the key used instead.
/// Change events always apply to the row of their Kafka key.
fn substitute_key(mode: &str, cdc: bool) -> (&'static str, KeyPlan) {
    match (mode, cdc) {
        ("record_value", true) => (
            "every value field as the key is not reproduced: the key is the \
             Kafka key's fields (the source's primary key)",
            KeyPlan::FromKafkaKey,
        ),
        ("record_value", false) => (
            "the whole value is the key: key = \"@event_hash\" (pure dedup)",
            KeyPlan::None,
        ),
        ("kafka", true) => (
            "rows keyed by Kafka coordinates (an append-only log) are not \
             reproduced: change events apply to the row of their Kafka key",
            KeyPlan::FromKafkaKey,
        ),
        ("kafka", false) => (
            "rows keyed by Kafka coordinates: key = \"@event_hash\" keeps every \
             distinct event once (a re-delivery is a duplicate)",
            KeyPlan::Coordinates,
        ),
        ("record_header", _) => (
            "keys from headers are not read as key fields (a typed route can map \
             `@header:<name>` columns); the Kafka key's fields are used",
            KeyPlan::FromKafkaKey,
        ),
        (_, true) => (
            "needs a key: the route takes the Kafka key's fields (the source's \
             primary key); an existing table without a primary key is refused \
             (add one, or use @event_hash for pure dedup on a document route)",
            KeyPlan::FromKafkaKey,
        ),
        (_, false) => (
            "needs a key: key = \"@event_hash\" for pure dedup",
            KeyPlan::None,
        ),
    }
}
