//! Command line: `run | setup | check-config | offsets show | replay`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "kafka-pg-sink",
    version,
    about = "Kafka → PostgreSQL with exactly-once effect"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (TOML). Environment: KAFKA_PG_SINK__SECTION__KEY overrides.
    #[arg(
        short,
        long,
        global = true,
        env = "KAFKA_PG_SINK_CONFIG",
        default_value = "config/local.toml"
    )]
    pub config: PathBuf,
    /// Override kafka.brokers.
    #[arg(long, global = true)]
    pub brokers: Option<String>,
    /// Override kafka.group_id.
    #[arg(long, global = true)]
    pub group: Option<String>,
    /// Override postgres.url.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Override http.bind.
    #[arg(long, global = true)]
    pub http_bind: Option<String>,
    /// Log format.
    #[arg(long, global = true, default_value = "pretty", value_parser = ["pretty", "json"])]
    pub log_format: String,
}

impl Global {
    pub fn overrides(&self) -> Overrides {
        // An empty variable (e.g. `DATABASE_URL=`) means "not set".
        let set = |o: &Option<String>| o.clone().filter(|s| !s.trim().is_empty());
        Overrides {
            brokers: set(&self.brokers),
            group_id: set(&self.group),
            database_url: set(&self.database_url),
            http_bind: set(&self.http_bind),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume and write until SIGTERM/SIGINT.
    Run,
    /// Apply migrations and create route tables, then exit.
    Setup,
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Stored offsets administration.
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
    /// Rewind (or move) stored offsets; running sinks pick it up without restart.
    Replay(ReplayArgs),
}

#[derive(Debug, Subcommand)]
pub enum OffsetsCommand {
    /// Per partition: stored next offset, broker watermarks, lag.
    Show {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_earliest", "to_offset", "to_timestamp"])))]
pub struct ReplayArgs {
    /// Start again from each partition's first available offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// Move to this offset (usually with --topic and --partition).
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Move to the first offset at or after this time (RFC 3339).
    #[arg(long)]
    pub to_timestamp: Option<String>,
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
}
