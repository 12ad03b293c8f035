//! Typed, layered configuration: TOML file → `KAFKA_PG_SINK__SECTION__KEY`
//! environment variables → CLI flags. Everything is validated at load time and
//! all problems are reported at once, each naming its key, so a bad deployment
//! fails before it connects anywhere (exit code 2).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::columns::ColumnMap;
use crate::types::TableName;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group; also the namespace of rows in `sink_offsets`.
    pub group_id: String,
    /// Where a partition with no stored offset starts: `earliest` or `latest`.
    #[serde(default = "default_reset")]
    pub auto_offset_reset: String,
    /// Any librdkafka property (SASL, SSL, timeouts…), passed through verbatim.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_reset() -> String {
    "earliest".into()
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=ca.pem`
    pub url: String,
    /// Read the password from this file (Kubernetes/Docker secrets), overriding the URL's.
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(default = "default_pool")]
    pub max_connections: u32,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_pool() -> u32 {
    4
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// A batch is committed when it holds this many messages…
    #[serde(default = "default_max_messages")]
    pub max_messages: usize,
    /// …or this long after its first message arrived, whichever comes first.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

fn default_max_messages() -> usize {
    5000
}
fn default_max_wait() -> Duration {
    Duration::from_millis(200)
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_messages: default_max_messages(),
            max_wait: default_max_wait(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`. Empty disables the server.
    #[serde(default = "default_bind")]
    pub bind: String,
}

fn default_bind() -> String {
    "127.0.0.1:9187".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: default_bind(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Poison messages go to `sink_dead_letters`; the partition keeps flowing.
    DeadLetter,
    /// The sink stops (non-zero exit) without committing the batch.
    Stop,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
    /// Bound on a graceful stop after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Copy committed offsets to Kafka (informational, for lag tools).
    #[serde(default = "default_true")]
    pub commit_to_kafka: bool,
}

fn default_on_error() -> OnError {
    OnError::DeadLetter
}
fn default_shutdown() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            on_error: default_on_error(),
            shutdown_timeout: default_shutdown(),
            commit_to_kafka: true,
        }
    }
}

/// How the row key is derived: `"/pointer"`, `["/a", "/b"]`, `"@kafka_key"`
/// or `"@event_hash"`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum KeySpec {
    One(String),
    Many(Vec<String>),
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

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact topic name, or a regex when it starts with `^`.
    pub topic: String,
    /// Target table (`table` or `schema.table`); always quoted.
    pub table: String,
    pub key: KeySpec,
    /// JSON pointers left out of the event hash (fields producers add on retry).
    #[serde(default)]
    pub hash_exclude: Vec<String>,
    /// Optional JSON pointer of an integer version: an update applies only if
    /// its version is ≥ the stored one.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub tombstones: TombstonePolicy,
    /// Typed table mode: column name → source (`/pointer`, `@payload`,
    /// `@kafka_key`, `@kafka_topic`, `@kafka_partition`, `@kafka_offset`,
    /// `@kafka_timestamp`, `@event_hash`, `@header:<name>`). `key` then names
    /// columns. Without it the route writes a document table.
    #[serde(default)]
    pub columns: Option<BTreeMap<String, String>>,
}

/// A validated route, ready for the pipeline.
#[derive(Clone, Debug)]
pub struct Route {
    pub topic: TopicMatcher,
    pub table: TableName,
    pub key: RowKeySource,
    pub hash_exclude: Vec<String>,
    pub version: Option<String>,
    pub tombstones: TombstonePolicy,
    /// Typed table mode (see `columns.rs`); `None` = document table.
    pub columns: Option<ColumnMap>,
    /// Runtime hint shared by the clones of this route: the last batch was
    /// mostly re-deliveries, so the next upsert filters stored duplicates
    /// first (`store::commit::upsert_documents`).
    pub duplicate_heavy: std::sync::Arc<std::sync::atomic::AtomicBool>,
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

#[derive(Clone, Debug, PartialEq)]
pub enum RowKeySource {
    Pointers(Vec<String>),
    KafkaKey,
    EventHash,
    /// Typed tables: the key is the mapped columns listed in `ColumnMap::key`.
    Columns,
}

/// Everything that can be wrong with a configuration, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// CLI-level overrides, applied last.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_bind: Option<String>,
}

impl Config {
    /// Loads file → env → overrides, then validates.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<(Config, Vec<Route>), ConfigError> {
        if !path.exists() {
            return Err(ConfigError {
                problems: vec![format!("config file {} does not exist", path.display())],
            });
        }
        let mut fig = Figment::new()
            .merge(Toml::file(path))
            .merge(Env::prefixed("KAFKA_PG_SINK__").split("__").lowercase(true));
        if let Some(b) = &overrides.brokers {
            fig = fig.merge(Serialized::default("kafka.brokers", b));
        }
        if let Some(g) = &overrides.group_id {
            fig = fig.merge(Serialized::default("kafka.group_id", g));
        }
        if let Some(u) = &overrides.database_url {
            fig = fig.merge(Serialized::default("postgres.url", u));
        }
        if let Some(h) = &overrides.http_bind {
            fig = fig.merge(Serialized::default("http.bind", h));
        }
        let mut cfg: Config = fig.extract().map_err(|e| ConfigError {
            problems: e.into_iter().map(|e| describe_figment_error(&e)).collect(),
        })?;
        cfg.kafka
            .properties
            .extend(kafka_properties_from_env(std::env::vars()));
        let routes = cfg.validate()?;
        Ok((cfg, routes))
    }

    /// Parses a TOML string (tests, examples).
    pub fn from_toml(s: &str) -> Result<(Config, Vec<Route>), ConfigError> {
        let cfg: Config = Figment::new()
            .merge(Toml::string(s))
            .extract()
            .map_err(|e| ConfigError {
                problems: e.into_iter().map(|e| describe_figment_error(&e)).collect(),
            })?;
        let routes = cfg.validate()?;
        Ok((cfg, routes))
    }

    /// Checks every field and returns all problems at once.
    pub fn validate(&self) -> Result<Vec<Route>, ConfigError> {
        let mut p = Vec::new();
        if self.kafka.brokers.trim().is_empty() {
            p.push("kafka.brokers: must not be empty".into());
        }
        if self.kafka.group_id.trim().is_empty() {
            p.push("kafka.group_id: must not be empty".into());
        }
        if !["earliest", "latest"].contains(&self.kafka.auto_offset_reset.as_str()) {
            p.push(format!(
                "kafka.auto_offset_reset: `{}` is not `earliest` or `latest`",
                self.kafka.auto_offset_reset
            ));
        }
        for k in self.kafka.properties.keys() {
            if RESERVED_KAFKA_PROPERTIES.contains(&k.as_str()) {
                p.push(format!(
                    "kafka.properties.\"{k}\": managed by kafka-pg-sink (offsets live in Postgres); remove it"
                ));
            }
        }
        match url::Url::parse(&self.postgres.url) {
            Ok(u) if u.scheme() == "postgres" || u.scheme() == "postgresql" => {}
            Ok(u) => p.push(format!(
                "postgres.url: scheme `{}` is not postgres://",
                u.scheme()
            )),
            Err(e) => p.push(format!("postgres.url: not a URL ({e})")),
        }
        if self.postgres.max_connections == 0 {
            p.push("postgres.max_connections: must be at least 1".into());
        }
        if self.batch.max_messages == 0 {
            p.push("batch.max_messages: must be at least 1".into());
        }
        if self.batch.max_wait.is_zero() {
            p.push("batch.max_wait: must be greater than 0".into());
        }
        if !self.http.bind.is_empty() && self.http.bind.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "http.bind: `{}` is not an address like 0.0.0.0:9187",
                self.http.bind
            ));
        }
        if self.routes.is_empty() {
            p.push("route: at least one [[route]] is required".into());
        }
        let mut routes = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("route[{i}]");
            let topic = if r.topic.starts_with('^') {
                match regex::Regex::new(&r.topic) {
                    Ok(re) => Some(TopicMatcher::Pattern(re)),
                    Err(e) => {
                        p.push(format!("{at}.topic: invalid regex ({e})"));
                        None
                    }
                }
            } else if r.topic.is_empty() {
                p.push(format!("{at}.topic: must not be empty"));
                None
            } else {
                Some(TopicMatcher::Exact(r.topic.clone()))
            };
            let table = TableName::parse(&r.table)
                .map_err(|e| p.push(format!("{at}.table: {e}")))
                .ok();
            let columns = r.columns.as_ref().and_then(|cols| {
                ColumnMap::from_config(&at, cols, &r.key, r.version.as_deref(), &mut p)
            });
            if r.columns.is_some()
                && !r.hash_exclude.is_empty()
                && columns.as_ref().is_some_and(|c| !c.maps_event_hash())
            {
                p.push(format!(
                    "{at}.hash_exclude: typed routes detect duplicates by the mapped column values; \
                     hash_exclude only shapes an `@event_hash` column, and none is mapped"
                ));
            }
            let key = match &r.key {
                _ if r.columns.is_some() => columns.as_ref().map(|_| RowKeySource::Columns),
                KeySpec::One(s) if s == "@kafka_key" => Some(RowKeySource::KafkaKey),
                KeySpec::One(s) if s == "@event_hash" => Some(RowKeySource::EventHash),
                KeySpec::One(s) => {
                    check_pointers(&format!("{at}.key"), std::slice::from_ref(s), &mut p)
                }
                KeySpec::Many(v) if v.is_empty() => {
                    p.push(format!("{at}.key: list must not be empty"));
                    None
                }
                KeySpec::Many(v) => check_pointers(&format!("{at}.key"), v, &mut p),
            };
            for (j, e) in r.hash_exclude.iter().enumerate() {
                if !e.starts_with('/') {
                    p.push(format!(
                        "{at}.hash_exclude[{j}]: `{e}` is not a JSON pointer (must start with `/`)"
                    ));
                }
            }
            if let Some(v) = &r.version {
                if !v.starts_with('/') {
                    p.push(format!(
                        "{at}.version: `{v}` is not a JSON pointer (must start with `/`)"
                    ));
                }
            }
            if let (Some(topic), Some(table), Some(key)) = (topic, table, key) {
                routes.push(Route {
                    topic,
                    table,
                    key,
                    hash_exclude: r.hash_exclude.clone(),
                    version: r.version.clone(),
                    tombstones: r.tombstones,
                    columns,
                    duplicate_heavy: Default::default(),
                });
            }
        }
        for (i, a) in self.routes.iter().enumerate() {
            for b in &self.routes[i + 1..] {
                if a.topic == b.topic {
                    p.push(format!("route: topic `{}` is routed twice", a.topic));
                }
            }
        }
        if p.is_empty() {
            Ok(routes)
        } else {
            Err(ConfigError { problems: p })
        }
    }

    /// The configuration as TOML with secrets masked (for `check-config`).
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.postgres.url = redact_url(&c.postgres.url);
        for (k, v) in c.kafka.properties.iter_mut() {
            if is_secret_key(k) {
                *v = "***".into();
            }
        }
        toml_string(&c)
    }
}

fn toml_string(c: &Config) -> String {
    // figment has no TOML writer; serde_json → a readable dump is enough here.
    serde_json::to_string_pretty(c).unwrap_or_default()
}

/// Prefix of environment variables that set librdkafka properties, whose
/// names contain dots and so cannot use the `__` nesting:
/// `KAFKA_PG_SINK_KAFKA_PROPERTY__SASL_PASSWORD` sets `sasl.password`
/// (librdkafka property names have no underscores).
pub const KAFKA_PROPERTY_ENV_PREFIX: &str = "KAFKA_PG_SINK_KAFKA_PROPERTY__";

pub fn kafka_properties_from_env(
    vars: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    vars.filter_map(|(k, v)| {
        let name = k.strip_prefix(KAFKA_PROPERTY_ENV_PREFIX)?;
        Some((name.to_ascii_lowercase().replace('_', "."), v))
    })
    .collect()
}

/// Routes from one `[[route]]` body with placeholder connection settings
/// (unit tests of the pure modules).
#[cfg(test)]
pub fn test_routes(route: &str) -> Result<Vec<Route>, ConfigError> {
    Config::from_toml(&format!(
        "[kafka]\nbrokers = \"x:1\"\ngroup_id = \"g\"\n[postgres]\nurl = \"postgres://h/db\"\n\
         [[route]]\n{route}\n"
    ))
    .map(|(_, r)| r)
}

/// Properties the sink sets itself; a user override would break the guarantee.
pub const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

fn check_pointers(at: &str, v: &[String], p: &mut Vec<String>) -> Option<RowKeySource> {
    let mut ok = true;
    for s in v {
        if !s.starts_with('/') {
            p.push(format!(
                "{at}: `{s}` is not a JSON pointer (`/field`), `@kafka_key` or `@event_hash`"
            ));
            ok = false;
        }
    }
    ok.then(|| RowKeySource::Pointers(v.to_vec()))
}

fn describe_figment_error(e: &figment::Error) -> String {
    let path = e.path.join(".");
    if path.is_empty() {
        e.kind.to_string()
    } else {
        format!("{path}: {}", e.kind)
    }
}

/// Whether a property name holds a secret (its value is never printed).
pub fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".key") || k.contains("token")
}

/// `postgres://user:pw@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_secret_key(&k) {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"
        group_id = "g"
        [postgres]
        url = "postgres://u:hunter2@127.0.0.1/db"
        [[route]]
        topic = "orders"
        table = "public.orders"
        key = "/order_id"
    "#;

    #[test]
    fn good_config_loads_with_defaults() {
        let (c, routes) = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.batch.max_messages, 5000);
        assert_eq!(c.sink.on_error, OnError::DeadLetter);
        assert_eq!(routes.len(), 1);
        assert_eq!(
            routes[0].key,
            RowKeySource::Pointers(vec!["/order_id".into()])
        );
        assert_eq!(routes[0].table.quoted(), r#""public"."orders""#);
    }

    #[test]
    fn all_problems_are_reported_with_their_keys() {
        let bad = r#"
            [kafka]
            brokers = ""
            group_id = "g"
            auto_offset_reset = "sometimes"
            properties = { "enable.auto.commit" = "true" }
            [postgres]
            url = "mysql://x"
            [batch]
            max_messages = 0
            [http]
            bind = "nope"
            [[route]]
            topic = "^(unclosed"
            table = "a.b.c"
            key = "order_id"
            hash_exclude = ["sent_at"]
        "#;
        let err = Config::from_toml(bad).unwrap_err();
        let text = err.to_string();
        for key in [
            "kafka.brokers",
            "kafka.auto_offset_reset",
            "kafka.properties.\"enable.auto.commit\"",
            "postgres.url",
            "batch.max_messages",
            "http.bind",
            "route[0].topic",
            "route[0].table",
            "route[0].key",
            "route[0].hash_exclude[0]",
        ] {
            assert!(text.contains(key), "missing {key} in:\n{text}");
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let err = Config::from_toml(&GOOD.replace("group_id", "groupid")).unwrap_err();
        assert!(err.to_string().contains("groupid"), "{err}");
        let err =
            Config::from_toml(&format!("{GOOD}\n[batch]\nmax_messages = \"many\"")).unwrap_err();
        assert!(err.to_string().contains("batch.max_messages"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let (mut c, _) = Config::from_toml(GOOD).unwrap();
        c.kafka
            .properties
            .insert("sasl.password".into(), "s3cret".into());
        c.postgres.url = "postgres://u:hunter2@h/db?sslpassword=abc&sslmode=require".into();
        let shown = format!("{}\n{:?}", c.redacted_toml(), c.postgres);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("abc"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
    }

    #[test]
    fn kafka_properties_come_from_env_with_dots() {
        let vars = vec![
            (
                "KAFKA_PG_SINK_KAFKA_PROPERTY__SASL_PASSWORD".to_string(),
                "pw".to_string(),
            ),
            (
                "KAFKA_PG_SINK_KAFKA_PROPERTY__SECURITY_PROTOCOL".to_string(),
                "SASL_SSL".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let got = kafka_properties_from_env(vars.into_iter());
        assert_eq!(
            got,
            vec![
                ("sasl.password".to_string(), "pw".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string())
            ]
        );
    }

    #[test]
    fn special_keys() {
        for (k, want) in [
            ("@kafka_key", RowKeySource::KafkaKey),
            ("@event_hash", RowKeySource::EventHash),
        ] {
            let (_, r) =
                Config::from_toml(&GOOD.replace("\"/order_id\"", &format!("\"{k}\""))).unwrap();
            assert_eq!(r[0].key, want);
        }
        let (_, r) = Config::from_toml(&GOOD.replace("\"/order_id\"", r#"["/a", "/b"]"#)).unwrap();
        assert_eq!(
            r[0].key,
            RowKeySource::Pointers(vec!["/a".into(), "/b".into()])
        );
    }
}
