//! Builds the running sink from a validated configuration: pool, migrations,
//! tables, HTTP server, consumer thread and pipeline, and stops them in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::fingerprint::{self, SelectedRoute};
use crate::config::route::{self, Route, RouteSpec};
use crate::config::Config;
use crate::format::registry::RegistryClient;
use crate::kafka::assignment::{Assignment, Envelope};
use crate::kafka::consumer;
use crate::ops::http::{self, HttpState};
use crate::ops::metrics::Metrics;
use crate::pipeline::schemas::Schemas;
use crate::pipeline::transactions::recall;
use crate::pipeline::Pipeline;
use crate::store::active::ActiveMember;
use crate::store::dialect::Dialect;
use crate::store::mappings::{canonical_table, MappingGuard};
use crate::store::{self, BatchWriter};

/// Connects, migrates, creates document tables and the tables that follow a
/// registry schema, checks every route's table and returns the routes
/// resolved against the catalog (typed routes learn their column types here).
pub async fn setup(cfg: &Config, specs: &[RouteSpec]) -> anyhow::Result<(PgPool, Vec<Route>)> {
    let (pool, routes, _) = setup_with_schemas(cfg, specs).await?;
    Ok((pool, routes))
}

/// [`setup`], also returning the schema registry feed when a route needs it.
pub async fn setup_with_schemas(
    cfg: &Config,
    specs: &[RouteSpec],
) -> anyhow::Result<(PgPool, Vec<Route>, Option<Arc<Schemas>>)> {
    let pool = store::connect(&cfg.postgres).await?;
    store::migrate(&pool).await.context("applying migrations")?;
    let mut specs = specs.to_vec();
    let schemas = match &cfg.schema_registry {
        Some(r) => {
            let client = RegistryClient::new(&r.client_config().map_err(anyhow::Error::msg)?)
                .context("schema registry")?;
            let schemas = Schemas::new(Arc::new(client));
            schemas
                .shape_tables(&pool, &mut specs)
                .await
                .context("creating tables from registry schemas")?;
            Some(Arc::new(schemas))
        }
        None => None,
    };
    store::schema::ensure_tables(&pool, &specs)
        .await
        .context("creating route tables")?;
    let routes = store::schema::resolve_routes(&pool, &specs).await?;
    Ok((pool, routes, schemas))
}

/// Stops at once, naming each GRANT, when the role lacks a right the run
/// needs (rather than failing its first batch).
async fn check_rights(pool: &PgPool, routes: &[Route]) -> anyhow::Result<()> {
    let missing = store::privileges::missing(pool, routes)
        .await
        .context("checking the role's rights")?;
    anyhow::ensure!(
        missing.is_empty(),
        "the database role lacks rights the sink needs:\n  - {}",
        missing.join("\n  - ")
    );
    Ok(())
}

/// Runs until `cancel` fires or a fatal error; returns after a bounded drain.
pub async fn run(
    cfg: Config,
    specs: Vec<RouteSpec>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let routes = fingerprint::fingerprinted(&cfg, &specs);
    run_with(cfg, routes, Metrics::new(), cancel).await
}

/// [`run`] for some routes of `cfg` (a live sink leaves out routes whose
/// promoted mapping it does not run; a rebuild runs one route into its
/// shadow), recording into `metrics` (kept across reloads). The writer
/// refuses to commit once a promote replaced one of these mappings.
pub async fn run_with(
    cfg: Config,
    selected: Vec<SelectedRoute>,
    metrics: Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let specs: Vec<RouteSpec> = selected.iter().map(|r| r.spec.clone()).collect();
    let (pool, routes, schemas) = setup_with_schemas(&cfg, &specs).await?;
    check_rights(&pool, &routes).await?;
    let guard = mapping_guard(&pool, &selected).await?;
    let assignment = Assignment::default();
    let http_task = serve_http(&cfg, &metrics, &pool, &assignment, &cancel).await?;
    // Whole source transactions need every partition in one process: the
    // others stand by until it goes.
    let active = match cfg.sink.source_transactions.enabled {
        true => match ActiveMember::acquire(&pool, &cfg.kafka.group_id, &cancel).await? {
            Some(member) => Some(tokio::spawn(member.watch(cancel.clone()))),
            None => return Ok(()),
        },
        false => None,
    };

    // Whatever can fail comes before the consumer thread: its rebalance
    // callback runs on this runtime, and an early return would shut the
    // runtime down under it (a panic on that thread: tests/chaos.rs, seed
    // 11116174914137090497, backends terminated while Citus was detected).
    let writer = batch_writer(&cfg, &pool, routes.clone(), guard).await?;

    // Partitions read again, for the gate of source transactions.
    let rewinds = recall::Inbox::default();
    let (handle, rx, consumer_cancel) =
        start_consumer(&cfg, &routes, &pool, &assignment, &metrics, &rewinds)?;

    if routes.iter().any(|r| r.is_cdc()) {
        tokio::spawn(purge_delete_markers(
            pool.clone(),
            cfg.sink.delete_marker_retention,
            cancel.clone(),
        ));
    }
    let pipeline = Pipeline::new(
        &cfg,
        writer,
        assignment,
        metrics,
        handle.commands.clone(),
        rewinds,
    )
    .with_schemas(schemas);
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
    let lost_lock = lost(active).await;
    pool.close().await;
    anyhow::ensure!(
        !lost_lock,
        "lost the active-member lock for source transactions (its database session ended)"
    );
    result.map_err(anyhow::Error::from)
}

/// Starts the consumer thread, feeding the returned channel until the
/// returned token is cancelled; partitions read again are told to
/// `rewinds` (source transactions).
fn start_consumer(
    cfg: &Config,
    routes: &[Route],
    pool: &PgPool,
    assignment: &Assignment,
    metrics: &Metrics,
    rewinds: &recall::Inbox,
) -> anyhow::Result<(
    consumer::ConsumerHandle,
    mpsc::Receiver<Vec<Envelope>>,
    CancellationToken,
)> {
    // Room for about two batches: the consumer fetches ahead while one commits.
    // Its capacity counts chunks of up to `consumer::CHUNK` messages.
    let messages = cfg.batch.max_messages.saturating_mul(2).max(1024);
    let (tx, rx) = mpsc::channel(messages.div_ceil(consumer::CHUNK));
    let consumer_cancel = CancellationToken::new();
    let handle = consumer::spawn(
        cfg,
        routes,
        consumer::StoredPositions {
            pool: pool.clone(),
            on_rewind: recall::hook(cfg, rewinds.clone()),
        },
        assignment.clone(),
        metrics.clone(),
        tx,
        consumer_cancel.clone(),
    )
    .context("creating Kafka consumer")?;
    tracing::info!(group = %cfg.kafka.group_id, topics = ?route::subscriptions(routes), "consuming");
    Ok((handle, rx, consumer_cancel))
}

/// The writer for this database (Citus or one Postgres).
async fn batch_writer(
    cfg: &Config,
    pool: &PgPool,
    routes: Vec<Route>,
    guard: MappingGuard,
) -> anyhow::Result<BatchWriter> {
    let dialect = Dialect::detect(pool).await.context("detecting Citus")?;
    if dialect.is_citus() {
        tracing::info!("the database is a Citus coordinator: distributed tables, 2PC commits");
    }
    Ok(
        BatchWriter::new(pool.clone(), &cfg.kafka.group_id, routes, cfg.sink.on_error)
            .with_guard(guard)
            .with_dialect(dialect)
            .with_deferred_constraints(cfg.sink.source_transactions.enabled),
    )
}

/// Whether the active member's watch ended because its lock was lost.
async fn lost(watch: Option<tokio::task::JoinHandle<bool>>) -> bool {
    let Some(watch) = watch else { return false };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), watch).await,
        Ok(Ok(true))
    )
}

/// The mapping each route's table must be written with (store/mappings.rs).
async fn mapping_guard(pool: &PgPool, selected: &[SelectedRoute]) -> anyhow::Result<MappingGuard> {
    let mut conn = pool.acquire().await?;
    let mut tables = Vec::with_capacity(selected.len());
    // A templated route's tables are promoted one by one, if ever; the
    // guard covers the tables named in the configuration.
    for r in selected.iter().filter(|r| !r.spec.is_dynamic()) {
        let t = canonical_table(&mut conn, &r.spec.table)
            .await?
            .with_context(|| format!("table {} disappeared", r.spec.table))?;
        tables.push((t.quoted(), r.fingerprint.clone()));
    }
    Ok(MappingGuard::new(tables))
}

async fn serve_http(
    cfg: &Config,
    metrics: &Metrics,
    pool: &PgPool,
    assignment: &Assignment,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    if cfg.http.bind.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&cfg.http.bind)
        .await
        .with_context(|| format!("binding http.bind {}", cfg.http.bind))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics /healthz /readyz");
    let state = HttpState {
        metrics: metrics.clone(),
        pool: pool.clone(),
        assignment: assignment.clone(),
    };
    Ok(Some(tokio::spawn(http::serve(
        listener,
        state,
        cancel.clone(),
    ))))
}

/// Forgets delete markers older than the retention, every few minutes.
async fn purge_delete_markers(pool: PgPool, retention: Duration, cancel: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        match store::cdc::purge_delete_markers(&pool, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, ?retention, "forgot old delete markers"),
            Err(e) => tracing::warn!(error = %e, "purging delete markers failed; retrying later"),
        }
    }
}
