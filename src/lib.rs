//! kafka-pg-sink: Kafka → PostgreSQL with exactly-once effect.
//!
//! Folders follow a message's way (docs/architecture.md):
//! * `kafka` — client settings, the consumer thread and its rebalance
//!   callback, partition ownership, the message as consumed
//! * `event` — the pure stages: decode → identity → fold → encode
//! * `store` — the one transaction per batch (fence, rows, dead letters),
//!   offsets and replay, setup, shadow tables
//! * `pipeline` — the loop carrying batches from `kafka` through `event`
//!   into `store`; writer schemas and table evolution; resyncs
//! * `config` — layered configuration, routes, column mappings, fingerprints
//! * `format`, `json` — schema'd wire formats and the registry; canonical
//!   JSON, its hash, pointers
//! * `reprocess` — verify, rebuild, promote, abort
//! * `ops` — metrics, HTTP, admin commands
//! * `app`, `supervise`, `cli` — assembling, running and commanding the sink
//! * `types`, `backoff` — domain types; the retry schedule

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
