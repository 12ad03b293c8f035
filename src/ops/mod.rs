//! Operations: Prometheus metrics, the HTTP endpoints, and the admin
//! commands that read or move stored positions.

pub mod admin;
pub mod http;
pub mod metrics;
