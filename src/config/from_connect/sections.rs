//! The `[kafka]` section (from `consumer.override.*`), `[postgres]` (from
//! the JDBC URL and credentials), `[batch]` and `[sink]`.

use std::fmt::Write as _;

use super::jdbc::Jdbc;
use super::notes::is_secret;
use super::text::{comment, key, q};
use super::{Translator, BROKERS_PLACEHOLDER};

const CONSUMER_OVERRIDE: &str = "consumer.override.";

/// Java consumer properties librdkafka reads under the same name.
const LIBRDKAFKA_SAME_NAME: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "client.id",
    "client.rack",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "max.partition.fetch.bytes",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "metadata.max.age.ms",
    "group.instance.id",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "socket.connection.setup.timeout.ms",
    "ssl.endpoint.identification.algorithm",
];

/// What the `consumer.override.*` options give the `[kafka]` section.
#[derive(Default)]
struct Consumer {
    brokers: Option<String>,
    group: Option<String>,
    reset: Option<String>,
    properties: Vec<(String, String)>,
}

/// What one consumer override becomes.
enum Override {
    Brokers,
    Group,
    Reset,
    Jaas,
    /// A librdkafka property with this value.
    Property(String),
    /// Not copied, for this reason.
    Note(&'static str),
}

/// The consumer property `p` with the value `v` (trimmed).
fn consumer_override(p: &str, v: &str) -> Override {
    match p {
        "bootstrap.servers" => Override::Brokers,
        "group.id" => Override::Group,
        "auto.offset.reset" if v == "earliest" || v == "latest" => Override::Reset,
        "sasl.jaas.config" => Override::Jaas,
        p if is_secret(p) => {
            Override::Note("a secret is not copied: set it as KAFKA_PG_SINK_KAFKA_PROPERTY__<NAME>")
        }
        p if p.starts_with("ssl.truststore.") || p.starts_with("ssl.keystore.") => Override::Note(
            "Java keystores: librdkafka reads PEM files (ssl.ca.location, \
             ssl.certificate.location, ssl.key.location)",
        ),
        "max.poll.records" => {
            Override::Note("a batch is bounded by batch.max_messages and batch.max_wait")
        }
        "isolation.level" => Override::Note(
            "kafka-pg-sink always reads read_committed (aborted transactions are never \
             applied)",
        ),
        "enable.auto.commit" | "auto.offset.reset" => Override::Note(
            "offsets are kept in Postgres with the rows; kafka.auto_offset_reset is \
             earliest or latest",
        ),
        // Java's empty value turns the check off; librdkafka says `none`.
        "ssl.endpoint.identification.algorithm" if v.is_empty() => {
            Override::Property("none".into())
        }
        p if LIBRDKAFKA_SAME_NAME.contains(&p) => Override::Property(v.to_string()),
        _ => Override::Note(
            "a Java consumer property not copied: add its librdkafka equivalent to \
             [kafka.properties] if it has one",
        ),
    }
}

/// `username="…"` of a PLAIN or SCRAM JAAS configuration.
fn jaas_username(jaas: &str) -> Option<String> {
    let i = jaas.find("username=")?;
    let rest = jaas[i + "username=".len()..].trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// What the JDBC URL's parameters give the `[postgres]` section.
#[derive(Default)]
struct UrlParams {
    /// The libpq parameters of the `postgres://` URL.
    params: Vec<(String, String)>,
    user: Option<String>,
    /// A password in the URL (not copied).
    password: bool,
    connect_timeout: Option<u64>,
    comments: Vec<String>,
}

impl Translator {
    pub(super) fn kafka_section(&mut self) -> String {
        let c = self.consumer();
        let mut out = String::from("[kafka]\n");
        match c.brokers {
            Some(b) => {
                let _ = writeln!(out, "brokers = {}", q(&b));
            }
            None => {
                let _ = writeln!(
                    out,
                    "# The Connect worker's bootstrap.servers (not part of the connector): set it\n\
                     # here or in KAFKA_PG_SINK__KAFKA__BROKERS.\n\
                     brokers = {}",
                    q(BROKERS_PLACEHOLDER)
                );
            }
        }
        let group = match (c.group, &self.name) {
            (Some(g), _) => g,
            (None, Some(n)) => format!("connect-{n}"),
            (None, None) => "kafka-pg-sink".to_string(),
        };
        let _ = writeln!(
            out,
            "# Connect's consumer group of this connector: lag tools keep their group (the\n\
             # sink keeps its positions in Postgres and copies them here). Delete the\n\
             # connector first: two consumers in one group split the partitions. Where to\n\
             # start: docs/migrate-from-connect.md, \"Cutting over\".\n\
             group_id = {}",
            q(&group)
        );
        if let Some(r) = c.reset {
            let _ = writeln!(out, "auto_offset_reset = {}", q(&r));
        }
        if !c.properties.is_empty() {
            out.push_str("\n[kafka.properties]\n");
            for (k, v) in &c.properties {
                let _ = writeln!(out, "{} = {}", key(k), q(v));
            }
        }
        out.push('\n');
        out
    }

    /// The `consumer.override.*` options, translated or noted.
    fn consumer(&mut self) -> Consumer {
        let mut c = Consumer::default();
        for k in self.keys_with_prefix(CONSUMER_OVERRIDE) {
            let prop = k[CONSUMER_OVERRIDE.len()..].to_string();
            let v = self.options[&k].trim().to_string();
            match consumer_override(&prop, &v) {
                Override::Brokers => c.brokers = Some(v),
                Override::Group => c.group = Some(v),
                Override::Reset => c.reset = Some(v),
                Override::Property(v) => c.properties.push((prop, v)),
                Override::Jaas => {
                    self.jaas(&k, &v, &mut c.properties);
                    continue;
                }
                Override::Note(why) => {
                    self.note_option(&k, why);
                    continue;
                }
            }
            self.used.insert(k);
        }
        c
    }

    /// A JAAS configuration: its username as `sasl.username`, the rest noted.
    fn jaas(&mut self, k: &str, v: &str, properties: &mut Vec<(String, String)>) {
        match jaas_username(v) {
            Some(u) => {
                properties.push(("sasl.username".into(), u));
                self.note_option(
                    k,
                    "Java JAAS: the username is copied to sasl.username; give the \
                     password as KAFKA_PG_SINK_KAFKA_PROPERTY__SASL_PASSWORD",
                );
            }
            None => self.note_option(
                k,
                "Java JAAS: give librdkafka's sasl.* properties under \
                 [kafka.properties] (secrets from the environment)",
            ),
        }
    }

    pub(super) fn postgres_section(&mut self) -> String {
        let url = self.take("connection.url").unwrap_or_default();
        let user = self.take_any(&["connection.username", "connection.user"]);
        let has_password = self
            .take("connection.password")
            .is_some_and(|p| !p.is_empty());
        let (pg_url, p) = match Jdbc::parse(&url) {
            Ok(j) => {
                let p = self.url_params(&j);
                let user = user.or_else(|| p.user.clone());
                (j.to_postgres_url(user.as_deref(), &p.params), p)
            }
            Err(e) => {
                self.note("connection.url", &e);
                (
                    "postgres://CHANGE-ME/CHANGE-ME".to_string(),
                    UrlParams::default(),
                )
            }
        };
        let mut out = String::from("[postgres]\n");
        let _ = writeln!(out, "url = {}", q(&pg_url));
        if has_password || p.password {
            out.push_str(
                "# The password is not copied: password_file = \"/run/secrets/postgres-password\"\n\
                 # (a mounted secret), or KAFKA_PG_SINK__POSTGRES__URL with the password in it.\n",
            );
        }
        if let Some(s) = p.connect_timeout.filter(|s| *s > 0) {
            let _ = writeln!(out, "connect_timeout = \"{s}s\"");
        }
        for c in p.comments {
            let _ = writeln!(out, "# {c}");
        }
        out.push('\n');
        out
    }

    /// The JDBC URL's hosts and parameters, translated or noted.
    fn url_params(&mut self, j: &Jdbc) -> UrlParams {
        if j.hosts.len() > 1 {
            self.note(
                "connection.url (several hosts)",
                "kafka-pg-sink connects to one host: the first is used (put a \
                 load balancer or the primary's address there)",
            );
        }
        let mut p = UrlParams {
            password: j.had_credentials,
            ..UrlParams::default()
        };
        let mut ssl = false;
        let mut dropped = Vec::new();
        for (k, v) in &j.params {
            match k.as_str() {
                "user" => p.user = Some(v.clone()),
                "password" => p.password = true,
                "sslmode" | "sslrootcert" | "sslcert" | "options" => {
                    p.params.push((k.clone(), v.clone()))
                }
                "sslkey" => {
                    p.params.push((k.clone(), v.clone()));
                    p.comments.push(
                        "sslkey: PgJDBC reads a PKCS-8 DER key (.pk8); kafka-pg-sink reads PEM."
                            .to_string(),
                    );
                }
                "ssl" => ssl = v.eq_ignore_ascii_case("true") || v.is_empty(),
                "ApplicationName" => p.params.push(("application_name".into(), v.clone())),
                "connectTimeout" => p.connect_timeout = v.parse::<u64>().ok(),
                "currentSchema" => {}
                "sslfactory" if v.ends_with("NonValidatingFactory") => {
                    if !j.has_param("sslmode") {
                        p.params.push(("sslmode".into(), "require".into()));
                    }
                }
                _ => dropped.push(format!("{k}={v}")),
            }
        }
        if ssl && !p.params.iter().any(|(k, _)| k == "sslmode") {
            // PgJDBC: ssl=true without sslmode verifies the certificate and host.
            p.params.push(("sslmode".into(), "verify-full".into()));
        }
        if !dropped.is_empty() {
            self.note(
                &format!("connection.url parameters {}", dropped.join("&")),
                "PgJDBC driver settings with no equivalent",
            );
        }
        if j.has_param("currentSchema") {
            self.note(
                "connection.url currentSchema",
                "unqualified table names are qualified with it in `table`",
            );
        }
        p
    }

    pub(super) fn batch_and_sink(&mut self) -> String {
        let mut out = String::new();
        if let Some(n) = self.take("batch.size") {
            match n.parse::<usize>() {
                Ok(n) if n > 0 => {
                    let _ = writeln!(
                        out,
                        "[batch]\n\
                         # batch.size; a batch is one transaction with its offsets, so larger\n\
                         # batches are cheaper (kafka-pg-sink's default is 10000 or 200 ms).\n\
                         max_messages = {n}\n"
                    );
                }
                _ => self.note_option("batch.size", "not a positive number"),
            }
        }
        let tolerance = self
            .take("errors.tolerance")
            .unwrap_or_else(|| "none".into());
        let on_error = if tolerance.eq_ignore_ascii_case("all") {
            "dead_letter"
        } else {
            "stop"
        };
        out.push_str("[sink]\n");
        comment(
            &mut out,
            &format!(
                "errors.tolerance = {tolerance}: {}",
                if on_error == "stop" {
                    "a bad record stops the sink, as it failed the task; \"dead_letter\" \
                     keeps it in sink_dead_letters and goes on"
                } else {
                    "bad records are kept in sink_dead_letters (same transaction as the \
                     offsets) and the partition goes on"
                }
            ),
        );
        let _ = writeln!(out, "on_error = {}\n", q(on_error));
        out
    }
}
