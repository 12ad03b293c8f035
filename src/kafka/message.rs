//! What flows through the sink: a message as consumed from Kafka, and a
//! message that could not be applied (a dead letter) with its reason.

use crate::types::{Offset, TopicPartition, Version};

/// One message as the consumer hands it over (owned; the consumer thread has
/// already returned librdkafka's buffer).
#[derive(Clone, Debug)]
pub struct SourceMessage {
    pub tp: TopicPartition,
    pub offset: Offset,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Message timestamp, milliseconds since the epoch.
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Where its source transaction committed, set by the whole-transactions
    /// gate on the last change of each row in a transaction whose END it
    /// read, and on every change of a connector's re-send of one: a Postgres
    /// change's position then sorts just before the commit
    /// (`event::position`), not at the change's own LSN.
    pub source_commit: Option<Version>,
}

/// Why a message could not be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoisonReason {
    InvalidJson,
    /// Not a change event the route's envelope understands.
    InvalidChange,
    MissingKey,
    /// The key is present but not a scalar (an object or array).
    InvalidKey,
    BadVersion,
    /// A typed column value that would make the row depend on the clock.
    TimeRelative,
    NoRoute,
    /// A templated route's table name cannot be rendered for the message.
    TableName,
    /// The message's table cannot take it (`on_table_error = "dead_letter"`).
    TableRefused,
    /// Rejected by the database (type conversion, constraint, jsonb limits).
    Database,
    /// A schema'd message that does not decode: `no_magic_byte`,
    /// `unknown_schema`, `invalid_schema`, `wrong_schema_type`, `undecodable`.
    Schema(&'static str),
}

impl PoisonReason {
    /// The `reason` label of `dead_letters_total` and the stored reason.
    pub fn as_str(self) -> &'static str {
        match self {
            PoisonReason::InvalidJson => "invalid_json",
            PoisonReason::InvalidChange => "invalid_change",
            PoisonReason::MissingKey => "missing_key",
            PoisonReason::InvalidKey => "invalid_key",
            PoisonReason::BadVersion => "bad_version",
            PoisonReason::TimeRelative => "time_relative",
            PoisonReason::NoRoute => "no_route",
            PoisonReason::TableName => "table_name",
            PoisonReason::TableRefused => "table_refused",
            PoisonReason::Database => "database",
            PoisonReason::Schema(code) => code,
        }
    }
}

/// Why a message cannot be applied, and the error text naming what is wrong.
pub type Poison = (PoisonReason, String);

/// A message stored in `sink_dead_letters` instead of being applied.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub tp: TopicPartition,
    pub offset: Offset,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason: PoisonReason,
    pub error: String,
}

impl DeadLetter {
    pub fn of(m: SourceMessage, reason: PoisonReason, error: String) -> DeadLetter {
        DeadLetter {
            tp: m.tp,
            offset: m.offset,
            key: m.key,
            payload: m.payload,
            reason,
            error,
        }
    }
}

/// Bytes as text: UTF-8 as is, anything else as `\x` + hex (the bytea input
/// form), so binary Kafka keys and headers stay unambiguous.
pub fn text_of_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => format!("\\x{}", hex::encode(b)),
    }
}
