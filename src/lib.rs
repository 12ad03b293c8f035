//! kafka-pg-sink: Kafka → PostgreSQL with exactly-once effect.
//!
//! From the bottom up (a module only uses modules listed before it):
//! * `types`, `backoff` — domain types; the retry schedule
//! * `hash`, `message` — canonical JSON + SHA-256; messages and dead letters
//! * `format`, `debezium` — schema'd wire formats (Avro, Protobuf, JSON
//!   Schema) and change-event envelopes, decoded to JSON (pure)
//! * `registry` — the schema registry client (Confluent API), cached by id
//! * `columns`, `route`, `config` — typed column mapping; routes; layered config
//! * `mapping` — a route's mapping fingerprint; selecting routes by name
//! * `batch` — fold a batch into the writes with the same effect (pure)
//! * `store` — the one transaction per batch, offsets, dead letters, setup
//! * `assignment` — partition ownership: generations, planned positions, seeks
//! * `metrics`, `kafka` — Prometheus registry; Kafka client settings
//! * `consumer`, `pipeline` — rdkafka thread; batch/commit loop, fences, replays
//! * `http`, `admin`, `app` — the edges
//! * `supervise` — the live sink across promotes (reloads its configuration)
//! * `reprocess` — verify, rebuild, promote, abort
//! * `cli` — the command line

pub mod app;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod event;
pub mod format;
pub mod json;
pub mod kafka;
pub mod ops;
pub mod pipeline;
pub mod reprocess;
pub mod store;
pub mod supervise;
pub mod types;
