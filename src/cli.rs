//! Command line: `run | setup | check-config | offsets show | replay |
//! verify | rebuild | promote | abort | config from-connect`, and the
//! dispatch of each command to the library. Exit codes: 0 ok, 1 runtime
//! failure, 2 invalid configuration (or input), 3 `verify` found
//! differences.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::app;
use crate::config::from_connect;
use crate::config::route::RouteSpec;
use crate::config::{Config, Overrides};
use crate::ops::admin::{self, ReplayTarget};
use crate::reprocess::rebuild::{self, PromoteOptions, RebuildEnd};
use crate::reprocess::verify::{self, VerifyOptions};
use crate::reprocess::Start;
use crate::supervise::{self, ConfigSource};

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
            toml: Vec::new(),
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
    /// Compare tables with the log up to the stored positions (exit 3 if they differ).
    Verify(VerifyArgs),
    /// Rebuild one route into a shadow table with this file's mapping; runs until promoted or aborted.
    Rebuild(RebuildArgs),
    /// Swap a rebuilt shadow table in for the live one, in one transaction.
    Promote(PromoteArgs),
    /// Drop a rebuild's shadow table and positions; the live table is untouched.
    Abort(ShadowArgs),
    /// Configuration tools; they read no configuration file and reach no server.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Translate a Kafka Connect JDBC sink connector (Debezium's or Confluent's) into this
    /// sink's TOML: the configuration on stdout, then what was not translated as comments.
    FromConnect {
        /// The connector's configuration: JSON as Connect's REST API shows it
        /// (`{"name", "config"}` or the flat map), or a .properties file; `-` reads stdin.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("start").args(["from_earliest", "from_offset", "from_timestamp"])))]
pub struct VerifyArgs {
    /// Only this route (its table or topic).
    #[arg(long)]
    pub route: Option<String>,
    /// Verify this rebuild's shadow table against the rebuild's positions (needs --route).
    #[arg(long)]
    pub shadow: Option<String>,
    /// Read each partition from its first available offset (the default).
    #[arg(long)]
    pub from_earliest: bool,
    /// Read each partition from this offset (partial check).
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// Read from the first offset at or after this time, RFC 3339 (partial check).
    #[arg(long)]
    pub from_timestamp: Option<String>,
    /// Do not compare source-position columns (compacted topics).
    #[arg(long)]
    pub content_only: bool,
    /// Sample keys shown per kind of difference.
    #[arg(long, default_value_t = 10)]
    pub samples: i64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShadowArgs {
    /// The route (its table or topic).
    #[arg(long)]
    pub route: String,
    /// The shadow table (in the live table's schema).
    #[arg(long, alias = "into")]
    pub shadow: String,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The route (its table or topic) whose mapping in this file is rebuilt.
    #[arg(long)]
    pub route: String,
    /// The shadow table to fill (created like the live table if missing).
    #[arg(long)]
    pub into: String,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub shadow: ShadowArgs,
    /// New name of the old live table (default `<table>_retired`).
    #[arg(long)]
    pub retire_as: Option<String>,
    /// Refuse if the rebuild is more than this many messages behind the live group.
    #[arg(long, default_value_t = 10_000)]
    pub max_lag: i64,
    /// Show the hand-over without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
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

/// Parses nothing more: loads the configuration, runs the command, maps the
/// result to an exit code.
pub fn main(cli: Cli) -> ExitCode {
    init_tracing(&cli.global.log_format);
    // Needs no configuration file (`--config` is not read) and no server.
    if let Command::Config { command } = &cli.command {
        return config_command(command);
    }
    let (cfg, routes) = match Config::load(&cli.global.config, &cli.global.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // A runtime worker per commit lane, not per core: the batch loop runs on
    // this thread (`block_on`), each lane's committer and the database's I/O
    // on a worker, CPU-heavy work (preparing a large batch, a comparison) on
    // blocking threads and the Kafka consumer on its own. A task woken from
    // outside the workers (a batch handed over by the batch loop) wakes a
    // parked worker; with one per core, more threads take turns. At
    // 2,000 events/s, one worker against two: p99 4.7 against 5.4 ms, sink
    // CPU per event 4% lower, saturated rates unchanged; one runtime thread
    // for everything cost the replay 6% (docs/performance.md, "Freshness").
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(cfg.sink.commit_lanes.max(1));
    let rt = rt.enable_all().build().expect("tokio runtime");
    let ctx = Context {
        source: ConfigSource {
            path: cli.global.config.clone(),
            overrides: cli.global.overrides(),
        },
        http_bind: cli
            .global
            .http_bind
            .clone()
            .filter(|s| !s.trim().is_empty()),
    };
    match rt.block_on(dispatch(cli.command, cfg, routes, ctx)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// What some commands need beyond the loaded configuration.
struct Context {
    source: ConfigSource,
    /// `--http-bind` as given on the command line (one-shot commands serve
    /// metrics only when asked, so they never collide with a running sink).
    http_bind: Option<String>,
}

async fn dispatch(
    cmd: Command,
    cfg: Config,
    routes: Vec<RouteSpec>,
    ctx: Context,
) -> anyhow::Result<ExitCode> {
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cmd {
        Command::CheckConfig => {
            println!("# configuration OK ({} route(s))", routes.len());
            print!("{}", cfg.redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Setup => done(setup(&cfg, &routes).await),
        Command::Run => done(run(cfg, routes, ctx.source).await),
        Command::Offsets {
            command: OffsetsCommand::Show { json },
        } => done(offsets_show(&cfg, &routes, json).await),
        Command::Replay(a) => done(replay(&cfg, &routes, &a).await),
        Command::Verify(a) => verify(&cfg, &routes, a, ctx.http_bind).await,
        Command::Rebuild(a) => done(rebuild(cfg, routes, &a, ctx.http_bind).await),
        Command::Promote(a) => done(promote(&cfg, &routes, &a).await),
        Command::Abort(a) => done(abort(&cfg, &routes, &a).await),
        Command::Config { .. } => unreachable!("handled before the configuration is loaded"),
    }
}

fn config_command(cmd: &ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::FromConnect { file } => from_connect_command(file),
    }
}

/// Prints the translation and the notes; exit 2 when the file is not a
/// PostgreSQL JDBC sink connector's configuration.
fn from_connect_command(path: &Path) -> ExitCode {
    match from_connect_text(path) {
        Ok(out) => {
            // A closed pipe (`| head`) is not an error of the translation.
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// The translation of the connector in `path` (`-`: stdin), then one
/// comment line per note.
fn from_connect_text(path: &Path) -> Result<String, String> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(path)
    };
    let connector = from_connect::parse_connector(&text.map_err(|e| e.to_string())?)?;
    from_connect::sink_kind(&connector)?;
    let t = from_connect::translate(&connector);
    let mut out = t.toml;
    for n in &t.notes {
        out.push_str(&format!("# not translated: {n}\n"));
    }
    Ok(out)
}

async fn setup(cfg: &Config, specs: &[RouteSpec]) -> anyhow::Result<()> {
    eprintln!(
        "applying migrations and creating {} route table(s)…",
        specs.len()
    );
    let (_, routes) = app::setup(cfg, specs).await?;
    for r in &routes {
        eprintln!("  ready: {}", r.table);
    }
    Ok(())
}

async fn run(cfg: Config, routes: Vec<RouteSpec>, source: ConfigSource) -> anyhow::Result<()> {
    let cancel = shutdown_on_signal(cfg.sink.shutdown_timeout);
    supervise::run(source, cfg, routes, cancel).await
}

/// A token cancelled on SIGTERM/SIGINT; the process exits 1 if the drain
/// that follows exceeds `timeout`.
fn shutdown_on_signal(timeout: std::time::Duration) -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            ?timeout,
            "shutdown requested; finishing the in-flight batch"
        );
        c.cancel();
        tokio::time::sleep(timeout).await;
        tracing::error!("shutdown exceeded its bound; exiting");
        std::process::exit(1);
    });
    cancel
}

async fn offsets_show(cfg: &Config, specs: &[RouteSpec], json: bool) -> anyhow::Result<()> {
    let (pool, routes) = app::setup(cfg, specs).await?;
    let rows = admin::show(cfg, &routes, &pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", admin::render_table(&rows));
    }
    Ok(())
}

async fn replay(cfg: &Config, specs: &[RouteSpec], a: &ReplayArgs) -> anyhow::Result<()> {
    let target = if a.to_earliest {
        ReplayTarget::Earliest
    } else if let Some(o) = a.to_offset {
        ReplayTarget::Offset(o)
    } else {
        let t = a.to_timestamp.as_deref().expect("clap requires one target");
        ReplayTarget::Timestamp(rfc3339_ms("--to-timestamp", t)?)
    };
    let (pool, routes) = app::setup(cfg, specs).await?;
    let moved = admin::replay(cfg, &routes, &pool, target, a.topic.as_deref(), a.partition).await?;
    for (tp, o) in &moved {
        println!("{tp} -> {o}");
    }
    println!(
        "rewrote {} partition position(s); running sinks re-read them now",
        moved.len()
    );
    Ok(())
}

async fn verify(
    cfg: &Config,
    specs: &[RouteSpec],
    a: VerifyArgs,
    http_bind: Option<String>,
) -> anyhow::Result<ExitCode> {
    let start = match (a.from_offset, &a.from_timestamp) {
        (Some(o), _) => Start::Offset(o),
        (_, Some(t)) => Start::Timestamp(rfc3339_ms("--from-timestamp", t)?),
        _ => Start::Earliest,
    };
    let opts = VerifyOptions {
        route: a.route,
        shadow: a.shadow,
        start,
        content_only: a.content_only,
        samples: a.samples.max(0),
        metrics_bind: http_bind,
    };
    let report = verify::verify(cfg, specs, &opts).await?;
    tracing::info!(
        ok = report.ok,
        messages = report.messages_read,
        "verify finished"
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn rfc3339_ms(flag: &str, t: &str) -> anyhow::Result<i64> {
    let ts = chrono::DateTime::parse_from_rfc3339(t)
        .map_err(|e| anyhow::anyhow!("{flag} `{t}`: not RFC 3339 ({e})"))?;
    Ok(ts.timestamp_millis())
}

async fn rebuild(
    mut cfg: Config,
    specs: Vec<RouteSpec>,
    a: &RebuildArgs,
    http_bind: Option<String>,
) -> anyhow::Result<()> {
    // The live sink usually serves http.bind on this host: only --http-bind
    // gives the rebuild an HTTP server.
    cfg.http.bind = http_bind.unwrap_or_default();
    let cancel = shutdown_on_signal(cfg.sink.shutdown_timeout);
    match rebuild::run(cfg, specs, &a.route, &a.into, cancel).await? {
        RebuildEnd::Promoted => eprintln!("the rebuild was promoted; stopping"),
        RebuildEnd::Aborted => eprintln!("the rebuild was aborted; stopping"),
        RebuildEnd::Stopped => eprintln!("stopped; run `rebuild` again to resume"),
    }
    Ok(())
}

async fn promote(cfg: &Config, specs: &[RouteSpec], a: &PromoteArgs) -> anyhow::Result<()> {
    let opts = PromoteOptions {
        route: a.shadow.route.clone(),
        shadow: a.shadow.shadow.clone(),
        retire_as: a.retire_as.clone(),
        max_lag: Some(a.max_lag),
        dry_run: a.dry_run,
    };
    let r = rebuild::promote(cfg, specs, &opts).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    for p in &r.positions {
        let show = |o: Option<i64>| o.map_or("-".to_string(), |o| o.to_string());
        println!(
            "{}[{}]: live {} rebuild {} -> {}",
            p.topic,
            p.partition,
            show(p.live),
            show(p.rebuild),
            p.next
        );
    }
    if r.promoted {
        println!(
            "promoted {} as {}; the old table is now {} (drop it when no longer needed). \
             Live sinks re-read their configuration and must map the route with fingerprint {}",
            r.shadow_table, r.live_table, r.retired_table, r.fingerprint
        );
    } else {
        println!(
            "dry run: nothing changed ({} message(s) to re-apply on the live side)",
            r.lag
        );
    }
    Ok(())
}

async fn abort(cfg: &Config, specs: &[RouteSpec], a: &ShadowArgs) -> anyhow::Result<()> {
    let (done, shadow) = rebuild::abort(cfg, specs, &a.route, &a.shadow).await?;
    if done {
        println!(
            "aborted: dropped {shadow} and the rebuild's positions; the live table is untouched"
        );
    } else {
        println!("the rebuild into {shadow} was already aborted");
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_env("KAFKA_PG_SINK_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn,rdkafka=warn,sqlx=warn"));
    use std::io::IsTerminal;
    // Colours only on a terminal: log files and collectors get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
