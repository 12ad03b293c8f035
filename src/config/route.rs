//! Routes: which topic goes to which table, and how a message becomes a row.
//!
//! A route exists in two states. [`RouteConfig`] is what the user wrote.
//! [`RouteSpec`] is that configuration validated (pointers checked, the topic
//! pattern compiled, a typed route's column mapping parsed); config loading
//! produces it without touching any server. [`Route`] is a spec resolved
//! against the database (typed routes know their column types), produced by
//! `store::schema::resolve_routes` at startup; batching and the store take
//! only resolved routes, so no statement can be built from a half-known route.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::columns::{ColumnMap, ColumnSpec};
use crate::config::target::TableTemplate;
use crate::format::Format;
use crate::json::pointer::JsonPointer;
use crate::types::TableName;

/// How the row key is derived: `"/pointer"`, `["/a", "/b"]`, `"@kafka_key"`
/// or `"@event_hash"`; with `columns`, column names.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum KeySpec {
    One(String),
    Many(Vec<String>),
}

impl KeySpec {
    pub fn parts(&self) -> &[String] {
        match self {
            KeySpec::One(s) => std::slice::from_ref(s),
            KeySpec::Many(v) => v,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TombstonePolicy {
    /// A null-valued message deletes the row with its key.
    #[default]
    Delete,
    /// Null-valued messages are counted and skipped.
    Ignore,
}

/// How a message value wraps the event.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeKind {
    /// The value is the event (JSON object).
    #[default]
    None,
    /// A Debezium change event: `op`, `before`/`after`, `source`
    /// (`event::debezium`); deletes and the order guard come from it.
    Debezium,
}

/// What a Debezium truncate event (`op = t`) does to the route's table.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TruncatePolicy {
    /// Delete every row whose source position is before the truncate's, and
    /// refuse re-sent older changes afterwards (like deletes).
    #[default]
    Apply,
    /// Count and log it; the table keeps its rows.
    Ignore,
}

/// Whether a table created from the schema follows new schema versions.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Evolve {
    /// Columns stay as created; fields added later are not stored.
    #[default]
    None,
    /// A new schema version's added fields become nullable columns. Dropping
    /// or changing a column's type is never done: such a version stops the
    /// sink with a message naming the column.
    AddColumns,
}

/// What happens to the messages of a table the route cannot create or
/// evolve as its change events need (a narrower type, another primary key,
/// a table another topic already feeds).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnTableError {
    /// The table's partitions stop (`partition_stalled` 1, an error log
    /// naming the table and the change); other tables go on. A restart, or a
    /// replay of the partitions, tries again — after the table was fixed.
    #[default]
    Stop,
    /// Its messages become dead letters (`table_refused`).
    DeadLetter,
}

/// The `@source:` name of the position computed for each connector
/// (`event::position`): one integer that orders a key's changes.
pub const SOURCE_POSITION: &str = "position";

/// The source position that orders a Debezium route's changes when none is
/// configured: each connector's own position (`event::position`).
pub const DEFAULT_CDC_POSITION: &str = "@source:position";

/// The column tables created from change events keep each row's source
/// position in, unless `position_column` names another.
pub const DEFAULT_POSITION_COLUMN: &str = "__source_position";

/// One `[[route]]` as written in the configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact topic name, or a regex when it starts with `^`.
    pub topic: String,
    /// Target table (`table` or `schema.table`); always quoted. With
    /// placeholders (`${topic}`, `${source.table}`, …) a table per source
    /// (`config::target`).
    pub table: String,
    /// The row key. May be left out on a change-event route that creates
    /// its tables: the Kafka key's schema (the source's primary key) gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySpec>,
    /// JSON pointers left out of the event hash (fields producers add on retry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_exclude: Vec<String>,
    /// Optional JSON pointer of an integer version: an update applies only if
    /// its version is ≥ the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub tombstones: TombstonePolicy,
    /// `none` (the value is the event) or `debezium` (change events: `after`
    /// is the row, `d` deletes, `version` defaults to `@source:lsn`).
    #[serde(default)]
    pub envelope: EnvelopeKind,
    /// Debezium truncate events: `apply` or `ignore`.
    #[serde(default)]
    pub on_truncate: TruncatePolicy,
    /// How values are encoded: `json` (default), or in the Confluent wire
    /// format with a registry schema: `avro`, `protobuf`, `json_schema`.
    #[serde(default)]
    pub format: Format,
    /// How Kafka keys are encoded (`json`: as text, the default).
    #[serde(default)]
    pub key_format: Format,
    /// Create the typed table from the value schema (the registry's latest
    /// version of `<topic>-value`); `columns` then come from the schema.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_table: bool,
    /// `add_columns`: follow new schema versions (with `create_table`).
    #[serde(default)]
    pub evolve: Evolve,
    /// Tables created from change events: the column holding each row's
    /// source position (the order guard's), added by the sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_column: Option<String>,
    /// Tables met while running: `stop` their partitions or `dead_letter`
    /// their messages when the table cannot take their events.
    #[serde(default)]
    pub on_table_error: OnTableError,
    /// Typed table mode: column name → source (`/pointer`, `@payload`,
    /// `@kafka_key`, `@kafka_topic`, `@kafka_partition`, `@kafka_offset`,
    /// `@kafka_timestamp`, `@event_hash`, `@header:<name>`, with
    /// `envelope = "debezium"` also `@source:<field>`). `key` then names
    /// columns. Without it the route writes a document table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<BTreeMap<String, String>>,
}

/// A route; `Columns` is [`ColumnSpec`] before the database was asked for the
/// column types and [`ColumnMap`] after.
#[derive(Clone, Debug)]
pub struct Route<Columns = ColumnMap> {
    pub topic: TopicMatcher,
    pub table: TableName,
    pub key: RowKeySource,
    pub hash_exclude: Vec<String>,
    pub version: Option<String>,
    /// `version` when it is a pointer into the event, parsed once.
    pub version_pointer: Option<JsonPointer>,
    pub tombstones: TombstonePolicy,
    pub envelope: EnvelopeKind,
    pub on_truncate: TruncatePolicy,
    pub format: Format,
    pub key_format: Format,
    /// The typed table follows the value schema (`create_table`): a spec has
    /// no `columns` yet; setup derives them from the registry.
    pub from_schema: bool,
    pub evolve: Evolve,
    /// The table name's placeholders, if it has any: the route is a
    /// template whose tables are instances (`config::target`).
    pub template: Option<TableTemplate>,
    /// Tables created from change events: their source position column.
    pub position_column: String,
    pub on_table_error: OnTableError,
    /// Typed table mode (see `config::columns`); `None` = document table.
    pub columns: Option<Columns>,
}

/// A validated route whose typed columns have no SQL types yet.
pub type RouteSpec = Route<ColumnSpec>;

impl<C> Route<C> {
    /// The same route with its column mapping converted by `f`.
    pub fn map_columns<D, E>(self, f: impl FnOnce(C) -> Result<D, E>) -> Result<Route<D>, E> {
        Ok(Route {
            columns: self.columns.map(f).transpose()?,
            topic: self.topic,
            table: self.table,
            key: self.key,
            hash_exclude: self.hash_exclude,
            version: self.version,
            version_pointer: self.version_pointer,
            tombstones: self.tombstones,
            envelope: self.envelope,
            on_truncate: self.on_truncate,
            format: self.format,
            key_format: self.key_format,
            from_schema: self.from_schema,
            evolve: self.evolve,
            template: self.template,
            position_column: self.position_column,
            on_table_error: self.on_table_error,
        })
    }

    pub fn is_typed(&self) -> bool {
        self.columns.is_some() || self.from_schema
    }

    /// The table has the document shape (created by `setup`).
    pub fn is_document(&self) -> bool {
        !self.is_typed()
    }

    /// The version is a computed source position (`event::position`), which
    /// can pass 2⁶³ (a MySQL binlog position packs three numbers): its
    /// columns and binds are `numeric`. Other versions are `bigint`.
    pub fn version_is_wide(&self) -> bool {
        self.orders_by_source_position()
    }

    /// Changes are ordered by their source position (`@source:position`).
    pub fn orders_by_source_position(&self) -> bool {
        self.version
            .as_deref()
            .and_then(|v| v.strip_prefix("@source:"))
            == Some(SOURCE_POSITION)
    }

    /// The SQL type the route's versions are kept and bound as.
    pub fn version_sql_type(&self) -> &'static str {
        if self.version_is_wide() {
            "numeric"
        } else {
            "bigint"
        }
    }

    /// Change events: deletes carry a source position and are remembered.
    pub fn is_cdc(&self) -> bool {
        self.envelope == EnvelopeKind::Debezium
    }

    /// The route's tables are met while it runs: a template, or a change
    /// event route that creates its table from the events' schemas. Such a
    /// route writes through its instances (`config::route_set::RouteSet`).
    pub fn is_dynamic(&self) -> bool {
        self.template.is_some() || (self.from_schema && self.is_cdc())
    }
}

#[derive(Clone, Debug)]
pub enum TopicMatcher {
    Exact(String),
    Pattern(regex::Regex),
}

impl TopicMatcher {
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicMatcher::Exact(t) => t == topic,
            TopicMatcher::Pattern(r) => r.is_match(topic),
        }
    }

    /// The string librdkafka subscribes with (it treats `^…` as a regex).
    pub fn subscription(&self) -> String {
        match self {
            TopicMatcher::Exact(t) => t.clone(),
            TopicMatcher::Pattern(r) => r.as_str().to_string(),
        }
    }
}

/// Topics to subscribe to, one per route.
pub fn subscriptions<C>(routes: &[Route<C>]) -> Vec<String> {
    routes.iter().map(|r| r.topic.subscription()).collect()
}

#[derive(Clone, Debug, PartialEq)]
pub enum RowKeySource {
    Pointers(Vec<JsonPointer>),
    KafkaKey,
    EventHash,
    /// Typed tables: the key is these mapped columns (`ColumnMap::key`).
    Columns(Vec<String>),
}

impl RouteConfig {
    /// Validates this route (the `i`-th); pushes every problem, named by key.
    pub fn validate(&self, i: usize, p: &mut Vec<String>) -> Option<RouteSpec> {
        let at = format!("route[{i}]");
        let before = p.len();
        let topic = self.topic_matcher(&at, p);
        let (table, template) = self.table_target(&at, p);
        let version = self.effective_version();
        let cdc = self.envelope == EnvelopeKind::Debezium;
        let key_parts = self.key_parts(&at, p);
        let columns = self.columns.as_ref().and_then(|cols| {
            ColumnSpec::from_config(&at, cols, &key_parts, version.as_deref(), cdc, p)
        });
        if let Some(c) = &columns {
            if !self.hash_exclude.is_empty() && !c.maps_event_hash() {
                p.push(format!(
                    "{at}.hash_exclude: typed routes detect duplicates by the mapped column values; \
                     hash_exclude only shapes an `@event_hash` column, and none is mapped"
                ));
            }
        }
        if self.create_table && !self.hash_exclude.is_empty() {
            p.push(format!(
                "{at}.hash_exclude: a table created from the schema detects duplicates by its \
                 column values (every field is a column); drop the field from the schema instead"
            ));
        }
        self.check_schema_options(&at, template.is_some(), p);
        let key = if self.columns.is_some() || self.create_table {
            RowKeySource::Columns(key_parts)
        } else {
            self.document_key(&at, &key_parts, p)
        };
        check_pointer_list(&format!("{at}.hash_exclude"), &self.hash_exclude, p);
        self.check_version(&at, version.as_deref(), p);
        let position_column = self.position_column(&at, p);
        if p.len() > before {
            return None;
        }
        Some(Route {
            topic: topic?,
            table: table?,
            key,
            hash_exclude: self.hash_exclude.clone(),
            version_pointer: version
                .as_deref()
                .filter(|v| v.starts_with('/'))
                .map(JsonPointer::parse),
            version,
            tombstones: self.tombstones,
            envelope: self.envelope,
            on_truncate: self.on_truncate,
            format: self.format,
            key_format: self.key_format,
            from_schema: self.create_table,
            evolve: self.evolve,
            template,
            position_column,
            on_table_error: self.on_table_error,
            columns,
        })
    }

    /// The table, or the template and its text as the route's name.
    fn table_target(
        &self,
        at: &str,
        p: &mut Vec<String>,
    ) -> (Option<TableName>, Option<TableTemplate>) {
        match TableTemplate::parse(&self.table) {
            Ok(Some(t)) => {
                if self.columns.is_some() {
                    p.push(format!(
                        "{at}.table: placeholders name a table per source; a `columns` map \
                         fits one table (use `create_table = true` to take each table's \
                         columns from its change events)"
                    ));
                }
                if t.reads_source() && !self.is_cdc() {
                    p.push(format!(
                        "{at}.table: `${{source.…}}` reads a change event's source block; \
                         set `envelope = \"debezium\"` (or use `${{topic}}`)"
                    ));
                }
                let name = TableName {
                    schema: None,
                    name: self.table.clone(),
                };
                (Some(name), Some(t))
            }
            Ok(None) => {
                let t = TableName::parse(&self.table)
                    .map_err(|e| p.push(format!("{at}.table: {e}")))
                    .ok();
                (t, None)
            }
            Err(e) => {
                p.push(format!("{at}.table: {e}"));
                (None, None)
            }
        }
    }

    pub fn is_cdc(&self) -> bool {
        self.envelope == EnvelopeKind::Debezium
    }

    /// The configured key's parts; none on a change-event route that creates
    /// its tables (the Kafka key's schema names the primary key).
    fn key_parts(&self, at: &str, p: &mut Vec<String>) -> Vec<String> {
        match &self.key {
            Some(k) => k.parts().to_vec(),
            None if self.create_table && self.is_cdc() => Vec::new(),
            None => {
                p.push(format!(
                    "{at}.key: missing (required unless the route creates its \
                                tables from change events, whose Kafka key names the primary key)"
                ));
                Vec::new()
            }
        }
    }

    fn position_column(&self, at: &str, p: &mut Vec<String>) -> String {
        match &self.position_column {
            Some(c) if !(self.create_table && self.is_cdc()) => {
                p.push(format!(
                    "{at}.position_column: `{c}` names a column of tables created from change \
                     events; set `create_table = true` and `envelope = \"debezium\"`"
                ));
                c.clone()
            }
            Some(c) if c.is_empty() || c.len() > 63 || c.contains('\0') => {
                p.push(format!(
                    "{at}.position_column: `{c}` is not a column name Postgres holds"
                ));
                c.clone()
            }
            Some(c) => c.clone(),
            None => DEFAULT_POSITION_COLUMN.to_string(),
        }
    }

    fn check_schema_options(&self, at: &str, templated: bool, p: &mut Vec<String>) {
        if self.create_table {
            // Change events carry their schema (JSON with schemas.enable, or
            // the registry's); other events need a registry format.
            if !self.format.is_schemad() && !self.is_cdc() {
                p.push(format!(
                    "{at}.create_table: needs a schema'd `format` (avro, protobuf, json_schema), \
                     or `envelope = \"debezium\"` (change events with their schemas)"
                ));
            }
            if self.columns.is_some() {
                p.push(format!(
                    "{at}.create_table: columns come from the schema; remove `columns`"
                ));
            }
            if templated && !self.is_cdc() {
                p.push(format!(
                    "{at}.create_table: a table per source is created from change events' \
                     schemas; set `envelope = \"debezium\"`"
                ));
            }
            if self.topic.starts_with('^') && !templated {
                p.push(format!(
                    "{at}.create_table: a `^regex` topic needs placeholders in `table` \
                     (e.g. `${{source.table}}`): one table per source, never mixed"
                ));
            }
        }
        if self.evolve == Evolve::AddColumns && !self.create_table {
            p.push(format!(
                "{at}.evolve: `add_columns` needs `create_table = true`"
            ));
        }
    }

    /// The configured `version`, or the source position for change events.
    /// A typed route that maps `@source:lsn` but not the position keeps the
    /// LSN, its default before positions were computed per connector (the
    /// same number for Postgres).
    fn effective_version(&self) -> Option<String> {
        const LEGACY: &str = "@source:lsn";
        let maps = |s: &str| {
            self.columns
                .as_ref()
                .is_some_and(|c| c.values().any(|v| v == s))
        };
        match (&self.version, self.envelope) {
            (Some(v), _) => Some(v.clone()),
            (None, EnvelopeKind::Debezium) if maps(LEGACY) && !maps(DEFAULT_CDC_POSITION) => {
                Some(LEGACY.to_string())
            }
            (None, EnvelopeKind::Debezium) => Some(DEFAULT_CDC_POSITION.to_string()),
            (None, EnvelopeKind::None) => None,
        }
    }

    fn check_version(&self, at: &str, version: Option<&str>, p: &mut Vec<String>) {
        let Some(v) = version else { return };
        let source_field = v.strip_prefix("@source:");
        match (source_field, self.envelope) {
            (Some(f), EnvelopeKind::Debezium) if !f.is_empty() => {}
            (Some(_), EnvelopeKind::None) => p.push(format!(
                "{at}.version: `{v}` reads a change event's source; set `envelope = \"debezium\"`"
            )),
            _ if v.starts_with('/') => {}
            _ => p.push(format!(
                "{at}.version: `{v}` is not a JSON pointer (must start with `/`) or `@source:<field>`"
            )),
        }
    }

    fn topic_matcher(&self, at: &str, p: &mut Vec<String>) -> Option<TopicMatcher> {
        if self.topic.starts_with('^') {
            regex::Regex::new(&self.topic)
                .map(TopicMatcher::Pattern)
                .map_err(|e| p.push(format!("{at}.topic: invalid regex ({e})")))
                .ok()
        } else if self.topic.is_empty() {
            p.push(format!("{at}.topic: must not be empty"));
            None
        } else {
            Some(TopicMatcher::Exact(self.topic.clone()))
        }
    }

    fn document_key(&self, at: &str, parts: &[String], p: &mut Vec<String>) -> RowKeySource {
        match parts {
            [s] if s == "@kafka_key" => RowKeySource::KafkaKey,
            [s] if s == "@event_hash" => RowKeySource::EventHash,
            [] => {
                if self.key.is_some() {
                    p.push(format!("{at}.key: list must not be empty"));
                }
                RowKeySource::Pointers(Vec::new())
            }
            parts => {
                for s in parts {
                    if !s.starts_with('/') {
                        p.push(format!(
                            "{at}.key: `{s}` is not a JSON pointer (`/field`), `@kafka_key` or `@event_hash`"
                        ));
                    }
                }
                RowKeySource::Pointers(parts.iter().map(|p| JsonPointer::parse(p)).collect())
            }
        }
    }
}

fn check_pointer_list(at: &str, pointers: &[String], p: &mut Vec<String>) {
    for (j, e) in pointers.iter().enumerate() {
        if !e.starts_with('/') {
            p.push(format!(
                "{at}[{j}]: `{e}` is not a JSON pointer (must start with `/`)"
            ));
        }
    }
}

/// Validates every route and the set of them; pushes problems.
pub fn validate_all(routes: &[RouteConfig], p: &mut Vec<String>) -> Vec<RouteSpec> {
    if routes.is_empty() {
        p.push("route: at least one [[route]] is required".into());
    }
    let specs = routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.validate(i, p))
        .collect();
    for (i, a) in routes.iter().enumerate() {
        for b in &routes[i + 1..] {
            if a.topic == b.topic {
                p.push(format!("route: topic `{}` is routed twice", a.topic));
            }
        }
    }
    specs
}
