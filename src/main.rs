//! Thin entry point: parse the command line, load configuration, hand over to
//! the library. Exit codes: 0 ok, 1 runtime failure, 2 invalid configuration.

use std::process::ExitCode;

use clap::Parser;
use kafka_pg_sink::admin::{self, ReplayTarget};
use kafka_pg_sink::cli::{Cli, Command, OffsetsCommand};
use kafka_pg_sink::config::Config;
use kafka_pg_sink::{app, config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.global.log_format);
    let (cfg, routes) = match Config::load(&cli.global.config, &cli.global.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(dispatch(cli.command, cfg, routes)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cmd: Command, cfg: Config, mut routes: Vec<config::Route>) -> anyhow::Result<()> {
    match cmd {
        Command::CheckConfig => {
            println!("configuration OK ({} route(s))", routes.len());
            println!("{}", cfg.redacted_toml());
            Ok(())
        }
        Command::Setup => {
            eprintln!(
                "applying migrations and creating {} route table(s)…",
                routes.len()
            );
            app::setup(&cfg, &mut routes).await?;
            for r in &routes {
                eprintln!("  ready: {}", r.table);
            }
            Ok(())
        }
        Command::Run => {
            let cancel = CancellationToken::new();
            let timeout = cfg.sink.shutdown_timeout;
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
            app::run(cfg, routes, cancel).await
        }
        Command::Offsets {
            command: OffsetsCommand::Show { json },
        } => {
            let pool = app::setup(&cfg, &mut routes).await?;
            let rows = admin::show(&cfg, &routes, &pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", admin::render_table(&rows));
            }
            Ok(())
        }
        Command::Replay(a) => {
            let target = if a.to_earliest {
                ReplayTarget::Earliest
            } else if let Some(o) = a.to_offset {
                ReplayTarget::Offset(o)
            } else {
                let t = a.to_timestamp.expect("clap requires one target");
                let ts = chrono::DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| anyhow::anyhow!("--to-timestamp `{t}`: not RFC 3339 ({e})"))?;
                ReplayTarget::Timestamp(ts.timestamp_millis())
            };
            let pool = app::setup(&cfg, &mut routes).await?;
            let moved = admin::replay(
                &cfg,
                &routes,
                &pool,
                target,
                a.topic.as_deref(),
                a.partition,
            )
            .await?;
            for (tp, o) in &moved {
                println!("{tp} -> {o}");
            }
            println!(
                "rewrote {} partition position(s); running sinks re-read them now",
                moved.len()
            );
            Ok(())
        }
    }
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
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
