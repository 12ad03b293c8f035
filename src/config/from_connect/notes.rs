//! The options left after the translation: those that need no equivalent,
//! with the reason, and those kafka-pg-sink does not know.

use super::Translator;

const RETRY: &str = "transient errors (database, registry) are retried with backoff until they \
                     succeed, never dead-lettered; a commit whose outcome is unknown is resolved \
                     from the stored offsets";
const TIME: &str = "time values are written as the events carry them (timestamptz as instants, \
                    timestamp without time zone unchanged); no zone is applied";
const DEAD_LETTER_CLIENTS: &str = "Connect's clients for the dead-letter topic; not needed";

/// Options that need no equivalent, by name, with the reason.
const KNOWN: &[(&[&str], &str)] = &[
    (
        &["tasks.max"],
        "kafka-pg-sink scales by running replicas in one consumer group; \
         sink.commit_lanes commits one replica's partitions in parallel",
    ),
    (
        &["use.reduction.buffer"],
        "each batch is already folded per row (at most two writes per key, with the \
         effect of every change in turn)",
    ),
    (
        &[
            "flush.max.retries",
            "flush.retry.delay.ms",
            "connection.attempts",
            "connection.backoff.ms",
            "max.retries",
            "retry.backoff.ms",
            "errors.retry.timeout",
            "errors.retry.delay.max.ms",
        ],
        RETRY,
    ),
    (
        &["connection.restart.on.errors"],
        "lost connections are re-opened and the batch is retried",
    ),
    (
        &["connection.provider"],
        "no connection provider: kafka-pg-sink has its own pool",
    ),
    (
        &[
            "use.time.zone",
            "database.time_zone",
            "db.timezone",
            "db.timezone.date",
        ],
        TIME,
    ),
    (
        &["collection.table.format"],
        "not read: table names come from `table`",
    ),
    (
        &["field.include.list", "field.exclude.list"],
        "every field of the change event becomes a column: leave fields out at the \
         source (column.exclude.list), or write one table with a typed route's `columns`",
    ),
    (
        &["fields.whitelist"],
        "every field of the schema becomes a column",
    ),
    (
        &["cloud.events.schema.name.pattern"],
        "CloudEvents envelopes are not read",
    ),
    (
        &["dialect.postgres.postgis.schema"],
        "PostGIS geometries are refused when a table is created from events: map them \
         with `columns`",
    ),
    (
        &["dialect.postgres.unnest.insert.enabled"],
        "rows already reach Postgres set-based (COPY into a staging table, one \
         statement per batch)",
    ),
    (
        &[
            "dialect.sqlserver.identity.insert",
            "mssql.use.merge.holdlock",
        ],
        "SQL Server only",
    ),
    (&["dialect.name"], "kafka-pg-sink writes PostgreSQL only"),
    (&["table.types"], "kafka-pg-sink writes tables"),
    (
        &["trim.sensitive.log"],
        "no equivalent: passwords are never logged or printed",
    ),
    (
        &["header.converter"],
        "headers are read as bytes: a typed route maps one with `@header:<name>`",
    ),
    (
        &["errors.log.enable", "errors.log.include.messages"],
        "dead letters are kept with their reason, error, key and payload in \
         sink_dead_letters and counted (dead_letters_total{reason})",
    ),
    (
        &["config.action.reload"],
        "a Connect worker option; no equivalent",
    ),
];

/// Options that need no equivalent, by the start of their name, with the reason.
const KNOWN_PREFIXES: &[(&str, &str)] = &[
    (
        "connection.pool.",
        "the pool is sized by postgres.max_connections (commit lanes + 2; default 4)",
    ),
    ("hibernate.", "no ORM"),
    (
        "errors.deadletterqueue.",
        "dead letters are rows of sink_dead_letters in Postgres, written in the same \
         transaction as the offsets, not a topic (sink.on_error)",
    ),
    ("producer.override.", DEAD_LETTER_CLIENTS),
    ("admin.override.", DEAD_LETTER_CLIENTS),
];

impl Translator {
    /// Options that need no equivalent, with the reason.
    pub(super) fn known_notes(&mut self) {
        for k in self.unused_with_prefix("") {
            let v = self.options[&k].trim().to_string();
            if let Some(why) = known_reason(&k, &v) {
                self.note_option(&k, why);
            }
        }
    }

    pub(super) fn unknown_notes(&mut self) {
        for k in self.unused_with_prefix("") {
            self.note_option(&k, "an option kafka-pg-sink does not know; not translated");
        }
    }
}

/// Why the option `k` with the value `v` needs no equivalent; `None` for an
/// option this module does not know.
fn known_reason(k: &str, v: &str) -> Option<&'static str> {
    match k {
        "insert.mode" => Some(match v.to_ascii_lowercase().as_str() {
            "insert" => "kafka-pg-sink always upserts; a duplicate insert is a no-op",
            "update" => "kafka-pg-sink upserts: a change for a missing row inserts it",
            _ => "kafka-pg-sink always upserts",
        }),
        "column.naming.strategy" if v.ends_with("DefaultColumnNamingStrategy") => {
            Some("columns are named exactly as the fields")
        }
        "column.naming.strategy" => {
            Some("custom strategies are not run: columns are named exactly as the fields")
        }
        _ => KNOWN
            .iter()
            .find(|(keys, _)| keys.contains(&k))
            .map(|(_, why)| *why)
            .or_else(|| {
                KNOWN_PREFIXES
                    .iter()
                    .find(|(prefix, _)| k.starts_with(prefix))
                    .map(|(_, why)| *why)
            }),
    }
}

/// Whether an option's value is (or contains) a secret, never printed.
pub(super) fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    crate::config::is_secret_key(&k)
        || k.contains("jaas")
        || k.contains("user.info")
        || k.contains("credentials")
}
