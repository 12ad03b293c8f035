//! Builds the running sink from a validated configuration: pool, migrations,
//! tables, HTTP server, consumer thread and pipeline, and stops them in order.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::subscriptions;
use crate::config::{Config, Route};
use crate::consumer::{self, SharedAssignment};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::store;

/// Connects, migrates and creates route tables; fails with context.
/// Typed routes learn their column types here.
pub async fn setup(cfg: &Config, routes: &mut [Route]) -> anyhow::Result<sqlx::PgPool> {
    let pool = store::connect(&cfg.postgres).await.with_context(|| {
        format!(
            "connecting to {}",
            crate::config::redact_url(&cfg.postgres.url)
        )
    })?;
    store::migrate(&pool).await.context("applying migrations")?;
    store::schema::ensure_tables(&pool, routes)
        .await
        .context("creating route tables")?;
    let problems = store::schema::check_tables(&pool, routes).await?;
    if !problems.is_empty() {
        anyhow::bail!(
            "route tables are not usable:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(pool)
}

/// Runs until `cancel` fires or a fatal error; returns after a bounded drain.
pub async fn run(
    cfg: Config,
    mut routes: Vec<Route>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let pool = setup(&cfg, &mut routes).await?;
    let assignment = SharedAssignment::default();

    let http_task = if cfg.http.bind.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&cfg.http.bind)
            .await
            .with_context(|| format!("binding http.bind {}", cfg.http.bind))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics /healthz /readyz");
        let state = HttpState {
            metrics: metrics.clone(),
            pool: pool.clone(),
            assignment: assignment.clone(),
        };
        Some(tokio::spawn(http::serve(listener, state, cancel.clone())))
    };

    // Room for about two batches: the consumer fetches ahead while one commits.
    let (tx, rx) = mpsc::channel(cfg.batch.max_messages.saturating_mul(2).max(1024));
    let consumer_cancel = CancellationToken::new();
    let handle = consumer::spawn(
        &cfg,
        &routes,
        pool.clone(),
        assignment.clone(),
        metrics.clone(),
        tx,
        consumer_cancel.clone(),
    )
    .context("creating Kafka consumer")?;
    tracing::info!(group = %cfg.kafka.group_id, topics = ?subscriptions(&routes), "consuming");

    let pipeline = Pipeline::new(
        &cfg,
        routes,
        pool.clone(),
        assignment,
        metrics,
        handle.commands.clone(),
    );
    let result = pipeline.run(rx, cancel.clone()).await;

    // Stop order: the pipeline has finished its in-flight commit; now leave
    // the group so partitions move on at once, then stop HTTP.
    consumer_cancel.cancel();
    cancel.cancel();
    let joined = tokio::task::spawn_blocking(move || handle.thread.join());
    let _ = tokio::time::timeout(Duration::from_secs(10), joined).await;
    if let Some(t) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    pool.close().await;
    result.map_err(anyhow::Error::from)
}
