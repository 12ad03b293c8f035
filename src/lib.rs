//! kafka-pg-sink: Kafka → PostgreSQL with exactly-once effect.
//!
//! * `hash` — canonical JSON + SHA-256 event identity (pure)
//! * `batch` — fold a batch into the writes with the same effect (pure)
//! * `store` — the one transaction per batch, offsets, dead letters, setup
//! * `consumer` — rdkafka thread, assignment from stored offsets, seeks
//! * `pipeline` — batch/commit loop, fencing, retries, replay notifications
//! * `metrics`, `http` — Prometheus and health endpoints
//! * `format`, `registry` — Avro / Protobuf / JSON Schema decoding (pure) and the
//!   schema registry client (issue 14)
//! * `config`, `cli`, `admin`, `app` — the edges

pub mod admin;
pub mod app;
pub mod batch;
pub mod cli;
pub mod columns;
pub mod config;
pub mod consumer;
pub mod format;
pub mod hash;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod store;
pub mod types;
