//! The Kafka side: client settings, the consumer thread and its rebalance
//! handling, partition ownership, and the message as it leaves librdkafka.

pub mod assignment;
pub mod client;
pub mod consumer;
mod lag;
pub mod message;
pub mod rebalance;
