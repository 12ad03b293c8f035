//! Typed, layered configuration: TOML file → `KAFKA_PG_SINK__SECTION__KEY`
//! environment variables → TOML layers and CLI flags ([`Overrides`]).
//! Everything is validated at load time and all problems are reported at
//! once, each naming its key, so a bad deployment fails before it connects
//! anywhere (exit code 2). Routes come out validated as [`RouteSpec`]s; the
//! database completes them at startup (`store::schema::resolve_routes`).

pub mod columns;
pub mod fingerprint;
pub mod from_connect;
pub mod route;
pub mod route_set;
pub mod target;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::config::route::{RouteConfig, RouteSpec};

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
    /// Needed by routes with a schema'd `format` (Avro, Protobuf, JSON Schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<RegistrySection>,
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteConfig>,
}

/// `[schema_registry]`: a Confluent-API registry (Confluent, Apicurio's
/// `/apis/ccompat/v7`, Redpanda, Karapace).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Better from the environment (`KAFKA_PG_SINK__SCHEMA_REGISTRY__PASSWORD`)
    /// or `password_file`; never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Extra trusted CA certificates (PEM) for an https URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Client certificate chain + key (one PEM file) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_identity_file: Option<String>,
    #[serde(default = "default_registry_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_registry_timeout() -> Duration {
    Duration::from_secs(10)
}

impl fmt::Debug for RegistrySection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySection")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RegistrySection {
    /// The client configuration, with the password read from its file.
    pub fn client_config(&self) -> Result<crate::format::registry::RegistryConfig, String> {
        let mut c = crate::format::registry::RegistryConfig::new(&self.url);
        c.username = self.username.clone();
        c.password = match (&self.password, &self.password_file) {
            (_, Some(f)) => {
                let pw = std::fs::read_to_string(f)
                    .map_err(|e| format!("schema_registry.password_file {f}: {e}"))?;
                Some(crate::format::registry::Secret::new(
                    pw.trim_end_matches(['\n', '\r']),
                ))
            }
            (Some(p), None) => Some(crate::format::registry::Secret::new(p.clone())),
            (None, None) => None,
        };
        c.ca_file = self.ca_file.as_ref().map(Into::into);
        c.client_identity_file = self.client_identity_file.as_ref().map(Into::into);
        c.timeout = self.timeout;
        Ok(c)
    }
}

/// Where a partition without a stored position starts.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
    /// Anything else; refused by validation (kept so that every problem of a
    /// file is reported at once, not just the first).
    #[serde(other)]
    Invalid,
}

impl OffsetReset {
    /// The value of librdkafka's `auto.offset.reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
            OffsetReset::Invalid => "invalid",
        }
    }
}

/// What to do when a partition's stored position is outside its log:
/// retention deleted records the sink never read (position below the log
/// start), or the topic was deleted and recreated (position beyond its end).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRangePolicy {
    /// Stop that partition (the others keep flowing), log the range, set
    /// `kafka_pg_sink_partition_stalled`; `replay` moves it on.
    #[default]
    Fail,
    /// Continue from the log start; records lost to retention are counted.
    Earliest,
    /// Continue from the log end; every record not read is counted as lost.
    Latest,
}

impl OutOfRangePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OutOfRangePolicy::Fail => "fail",
            OutOfRangePolicy::Earliest => "earliest",
            OutOfRangePolicy::Latest => "latest",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group; also the namespace of rows in `sink_offsets`.
    pub group_id: String,
    /// Where a partition with no stored offset starts: `earliest` or `latest`.
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// A stored position outside the partition's log: `fail` (stop that
    /// partition), `earliest` or `latest`. Never silent: logged, counted and
    /// recorded in `sink_offset_resets`.
    #[serde(default)]
    pub on_offset_out_of_range: OutOfRangePolicy,
    /// Any librdkafka property (SASL, SSL, timeouts…), passed through verbatim.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=ca.pem`
    pub url: String,
    /// Read the password from this file (Kubernetes/Docker secrets), overriding the URL's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// …or at once when the consumer has nothing more queued and no commit
    /// is in flight: waiting would only make the data older. Under load
    /// batches still grow while the previous one commits.
    #[serde(default = "default_true")]
    pub close_when_idle: bool,
}

fn default_max_messages() -> usize {
    10_000
}
fn default_max_wait() -> Duration {
    Duration::from_millis(200)
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_messages: default_max_messages(),
            max_wait: default_max_wait(),
            close_when_idle: true,
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
    /// Copy committed offsets to Kafka (informational, for lag tools; at
    /// most once a second, the latest per partition).
    #[serde(default = "default_true")]
    pub commit_to_kafka: bool,
    /// Commit lanes: partitions are split into this many disjoint sets, each
    /// committing its batches on its own connection, in parallel (each
    /// partition's batches stay in order; the fence is per partition). Also
    /// the number of async runtime workers, set at start (`cli.rs`).
    #[serde(default = "default_lanes")]
    pub commit_lanes: usize,
    /// How long deletes of change-event routes are remembered to refuse an
    /// older change re-sent later (`sink_delete_markers`).
    #[serde(default = "default_marker_retention", with = "humantime_serde")]
    pub delete_marker_retention: Duration,
    /// Apply each source transaction (Debezium transaction metadata) in
    /// one Postgres transaction: `pipeline::transactions`, docs/cdc.md.
    #[serde(default)]
    pub source_transactions: SourceTransactions,
}

/// `[sink.source_transactions]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceTransactions {
    #[serde(default)]
    pub enabled: bool,
    /// Changes held while their transactions are incomplete, at most.
    #[serde(default = "default_tx_buffer")]
    pub max_buffered_events: usize,
    /// Past `max_buffered_events`: apply the oldest transaction in parts
    /// (`split`, counted and logged) or stop the sink (`stop`).
    #[serde(default)]
    pub on_overflow: TransactionOverflow,
    /// Markers read back below the transaction topic's stored position when
    /// it is assigned: the transactions already applied there, so that a
    /// process taking over tells a connector's re-sends of them from
    /// transactions it has not seen whole (0: none).
    #[serde(default = "default_recall_markers")]
    pub recall_markers: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TransactionOverflow {
    #[default]
    Split,
    Stop,
}

fn default_tx_buffer() -> usize {
    200_000
}

fn default_recall_markers() -> u64 {
    100_000
}

impl Default for SourceTransactions {
    fn default() -> Self {
        SourceTransactions {
            enabled: false,
            max_buffered_events: default_tx_buffer(),
            on_overflow: TransactionOverflow::default(),
            recall_markers: default_recall_markers(),
        }
    }
}

fn default_lanes() -> usize {
    1
}

fn default_marker_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
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
            commit_lanes: default_lanes(),
            delete_marker_retention: default_marker_retention(),
            source_transactions: SourceTransactions::default(),
        }
    }
}

/// Everything that can be wrong with a configuration, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: String) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

/// What is layered over the file and the environment, in this order: TOML
/// fragments (tests, tools; a `[[route]]` in a fragment replaces the file's
/// routes), then the CLI flags.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub toml: Vec<String>,
    pub brokers: Option<String>,
    pub group_id: Option<String>,
    pub database_url: Option<String>,
    pub http_bind: Option<String>,
}

impl Config {
    /// Loads file → env → overrides, then validates.
    pub fn load(
        path: &Path,
        overrides: &Overrides,
    ) -> Result<(Config, Vec<RouteSpec>), ConfigError> {
        if !path.exists() {
            return Err(ConfigError::one(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        let mut fig = Figment::new()
            .merge(Toml::file(path))
            .merge(Env::prefixed("KAFKA_PG_SINK__").split("__").lowercase(true));
        for layer in &overrides.toml {
            fig = fig.merge(Toml::string(layer));
        }
        for (key, value) in [
            ("kafka.brokers", &overrides.brokers),
            ("kafka.group_id", &overrides.group_id),
            ("postgres.url", &overrides.database_url),
            ("http.bind", &overrides.http_bind),
        ] {
            if let Some(v) = value {
                fig = fig.merge(Serialized::default(key, v));
            }
        }
        let mut cfg = extract(fig)?;
        cfg.kafka
            .properties
            .extend(kafka_properties_from_env(std::env::vars()));
        let routes = cfg.validate()?;
        Ok((cfg, routes))
    }

    /// Checks every field and returns all problems at once.
    pub fn validate(&self) -> Result<Vec<RouteSpec>, ConfigError> {
        let mut p = Vec::new();
        self.validate_kafka(&mut p);
        self.validate_postgres(&mut p);
        self.validate_batch_and_http(&mut p);
        self.validate_registry(&mut p);
        let routes = route::validate_all(&self.routes, &mut p);
        if p.is_empty() {
            Ok(routes)
        } else {
            Err(ConfigError { problems: p })
        }
    }

    fn validate_kafka(&self, p: &mut Vec<String>) {
        if self.kafka.brokers.trim().is_empty() {
            p.push("kafka.brokers: must not be empty".into());
        }
        if self.kafka.group_id.trim().is_empty() {
            p.push("kafka.group_id: must not be empty".into());
        }
        if self.kafka.auto_offset_reset == OffsetReset::Invalid {
            p.push("kafka.auto_offset_reset: must be `earliest` or `latest`".into());
        }
        for k in self.kafka.properties.keys() {
            if RESERVED_KAFKA_PROPERTIES.contains(&k.as_str()) {
                p.push(format!(
                    "kafka.properties.\"{k}\": managed by kafka-pg-sink (offsets live in Postgres); remove it"
                ));
            }
        }
    }

    fn validate_postgres(&self, p: &mut Vec<String>) {
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
        if self.sink.source_transactions.enabled && self.sink.commit_lanes > 1 {
            p.push(
                "sink.commit_lanes: source transactions commit on one lane (a transaction's \
                 changes span partitions); set 1"
                    .into(),
            );
        }
        // One connection per commit lane, one for LISTEN, one for position reads.
        if self.sink.commit_lanes == 0 {
            p.push("sink.commit_lanes: must be at least 1".into());
        } else if self.postgres.max_connections < self.sink.commit_lanes as u32 + 2 {
            p.push(format!(
                "postgres.max_connections: {} is too few for sink.commit_lanes = {} (needs lanes + 2)",
                self.postgres.max_connections, self.sink.commit_lanes
            ));
        }
    }

    fn validate_batch_and_http(&self, p: &mut Vec<String>) {
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
    }

    fn validate_registry(&self, p: &mut Vec<String>) {
        if let Some(r) = &self.schema_registry {
            match url::Url::parse(&r.url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                Ok(u) => p.push(format!(
                    "schema_registry.url: scheme `{}` is not http(s)",
                    u.scheme()
                )),
                Err(e) => p.push(format!("schema_registry.url: not a URL ({e})")),
            }
            if r.password.is_some() && r.password_file.is_some() {
                p.push("schema_registry: set password or password_file, not both".into());
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if self.sink.source_transactions.enabled && r.is_cdc() && r.format.is_schemad() {
                p.push(format!(
                    "route[{i}].format: sink.source_transactions reads each change's \
                     transaction from JSON change events; `{}` is not supported",
                    r.format
                ));
            }
            if (r.format.is_schemad() || r.key_format.is_schemad())
                && self.schema_registry.is_none()
            {
                p.push(format!(
                    "route[{i}].format: `{}` needs a [schema_registry] section",
                    if r.format.is_schemad() {
                        r.format
                    } else {
                        r.key_format
                    }
                ));
            }
        }
    }

    /// The configuration as TOML with secrets masked (for `check-config`).
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.postgres.url = redact_url(&c.postgres.url);
        if let Some(r) = &mut c.schema_registry {
            r.url = redact_url(&r.url);
            if r.password.is_some() {
                r.password = Some("***".into());
            }
        }
        for (k, v) in c.kafka.properties.iter_mut() {
            if is_secret_key(k) {
                *v = "***".into();
            }
        }
        c.to_toml()
    }

    /// The configuration as TOML that [`Config::load`] reads back unchanged
    /// (tests and tools write configurations this way).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a loaded configuration serializes")
    }
}

fn extract(fig: Figment) -> Result<Config, ConfigError> {
    fig.extract().map_err(|e| ConfigError {
        problems: e.into_iter().map(|e| describe_figment_error(&e)).collect(),
    })
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

/// The shipped local configuration (`config/local.toml`), the base that
/// tests, the benchmark and tools layer their settings over.
pub fn local_config_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml")
}

/// A configuration from TOML text alone (unit tests of this module).
#[cfg(test)]
fn parse(s: &str) -> Result<(Config, Vec<RouteSpec>), ConfigError> {
    let cfg = extract(Figment::from(Toml::string(s)))?;
    let routes = cfg.validate()?;
    Ok((cfg, routes))
}

/// Resolved routes from one `[[route]]` body layered over the local
/// configuration, with every typed column of SQL type `text` (unit tests of
/// the pure modules).
#[cfg(test)]
pub fn test_routes(route: &str) -> Result<Vec<crate::config::route::Route>, ConfigError> {
    let overrides = Overrides {
        toml: vec![format!("[[route]]\n{route}\n")],
        ..Default::default()
    };
    let (_, specs) = Config::load(&local_config_path(), &overrides)?;
    Ok(specs
        .into_iter()
        .map(|r| {
            r.map_columns(|c| {
                c.resolve(|_| {
                    Some(crate::config::columns::SqlType::new(
                        "text",
                        crate::config::columns::ColumnKind::Scalar,
                    ))
                })
            })
            .expect("every column gets a type")
        })
        .collect())
}

/// Properties the sink sets itself; a user override would break the guarantee.
pub const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "group.id",
    "bootstrap.servers",
];

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
    use crate::config::route::RowKeySource;
    use crate::json::pointer::JsonPointer;

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
        let (c, routes) = parse(GOOD).unwrap();
        assert_eq!(c.batch.max_messages, 10_000);
        assert_eq!(c.sink.on_error, OnError::DeadLetter);
        assert_eq!(routes.len(), 1);
        assert_eq!(
            routes[0].key,
            RowKeySource::Pointers(vec![JsonPointer::parse("/order_id")])
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
        let err = parse(bad).unwrap_err();
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
    fn create_table_routes_refuse_hash_exclude() {
        let route = "[schema_registry]\nurl = \"http://registry:8081\"\n[[route]]\n\
                     topic = \"orders\"\ntable = \"orders\"\nformat = \"avro\"\n\
                     create_table = true\nkey = \"id\"\n";
        let base = GOOD.split("[[route]]").next().unwrap();
        assert!(parse(&format!("{base}{route}")).is_ok());
        let err = parse(&format!("{base}{route}hash_exclude = [\"/sent_at\"]\n")).unwrap_err();
        assert!(
            err.to_string()
                .contains("route[0].hash_exclude: a table created from the schema"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let err = parse(&GOOD.replace("group_id", "groupid")).unwrap_err();
        assert!(err.to_string().contains("groupid"), "{err}");
        let err = parse(&format!("{GOOD}\n[batch]\nmax_messages = \"many\"")).unwrap_err();
        assert!(err.to_string().contains("batch.max_messages"), "{err}");
    }

    #[test]
    fn written_toml_loads_back_unchanged() {
        let typed = "[[route]]\ntopic = \"^pay.*\"\ntable = \"billing.payments\"\nkey = [\"id\"]\n\
                     columns = { id = \"/id\", raw = \"@payload\" }\n";
        let (c, routes) = parse(&format!(
            "{GOOD}\n[kafka.properties]\n\"fetch.min.bytes\" = \"1\"\n{typed}"
        ))
        .unwrap();
        let text = c.to_toml();
        let (back, back_routes) = parse(&text).unwrap();
        assert_eq!(back.to_toml(), text);
        assert_eq!(routes.len(), 2);
        assert_eq!(back_routes.len(), 2);
        assert!(text.contains("max_wait = \"200ms\""), "{text}");
    }

    #[test]
    fn secrets_are_redacted() {
        let (mut c, _) = parse(GOOD).unwrap();
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
            let (_, r) = parse(&GOOD.replace("\"/order_id\"", &format!("\"{k}\""))).unwrap();
            assert_eq!(r[0].key, want);
        }
        let (_, r) = parse(&GOOD.replace("\"/order_id\"", r#"["/a", "/b"]"#)).unwrap();
        assert_eq!(
            r[0].key,
            RowKeySource::Pointers(vec![JsonPointer::parse("/a"), JsonPointer::parse("/b")])
        );
    }
}
