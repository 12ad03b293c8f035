//! `verify`: does a table equal what the log says it should hold?
//!
//! 1. **Snapshot.** One connection opens a REPEATABLE READ transaction and
//!    reads the group's stored positions in it. Rows and positions commit
//!    together (store/commit.rs), so in this snapshot the table reflects
//!    exactly the messages below those positions — whatever the running sink
//!    commits later is invisible to the comparison. The range to check per
//!    partition is `[start, stored)`.
//! 2. **Fold.** A reader outside any consumer group reads those ranges; each
//!    chunk goes through `event::prepare` and `BatchWriter::apply_unfenced`,
//!    the sink's own fold and statements, into a temporary copy of the table
//!    inside the same transaction. Postgres does the per-key work (last
//!    write wins, hash and version guards, type conversion, rejected rows),
//!    so memory in this process is bounded by two chunks of
//!    `batch.max_messages` messages whatever the number of keys.
//! 3. **Compare.** Postgres joins the table (as of the snapshot) and the
//!    copy on the key: missing, extra and different rows with sample keys,
//!    and an order-independent checksum of each side. The transaction is
//!    rolled back: verify writes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use prometheus::{Gauge, IntCounter, IntGaugeVec, Opts};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::reader::{self, Range};
use super::report::{self, Mode, PartitionRange, RouteReport, VerifyReport};
use super::{existing_table, metadata_client, partition_logs, shadow_beside, start_offsets};
use super::{instances, PartitionLog, Start};
use crate::config::fingerprint;
use crate::config::route::{Route, RouteSpec};
use crate::config::route_set::RouteSet;
use crate::config::{Config, OnError};
use crate::event::straddle::SnapshotPoints;
use crate::event::{self, PreparedBatch};
use crate::format::SchemaSet;
use crate::kafka::assignment::Assignment;
use crate::kafka::message::SourceMessage;
use crate::ops::http::{self, HttpState};
use crate::ops::metrics::Metrics;
use crate::pipeline::transactions::{may_carry_markers, ReadBack};
use crate::store::compare::{self, Columns};
use crate::store::dialect::Dialect;
use crate::store::replica::TableSource;
use crate::store::shadow::rebuild_group;
use crate::store::{self, schema, BatchWriter};
use crate::types::{Offset, RowKey, TopicPartition};

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// A route's table or topic; all routes when `None`.
    pub route: Option<String>,
    /// Verify this rebuild's shadow table against the rebuild's positions.
    pub shadow: Option<String>,
    pub start: Start,
    /// Leave the source-position columns out of the comparison.
    pub content_only: bool,
    /// Sample keys per kind of difference.
    pub samples: i64,
    /// Serve /metrics (progress) here while running.
    pub metrics_bind: Option<String>,
}

/// What is verified: the group whose positions count, and the routes
/// resolved against the tables compared (the live ones, or a shadow).
struct Target {
    pool: PgPool,
    group: String,
    routes: Vec<Route>,
    /// Per route, what folds its events: the route itself, or for a table a
    /// templated route created, the template (and the table's record).
    folds: Vec<(Route, Option<TableSource>)>,
}

impl Target {
    async fn resolve(
        cfg: &Config,
        specs: &[RouteSpec],
        opts: &VerifyOptions,
    ) -> anyhow::Result<Target> {
        let named = opts.route.as_deref();
        let selected = match fingerprint::select(cfg, specs, named) {
            Ok(s) => s,
            // Perhaps a table a templated route created.
            Err(_) if named.is_some() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let pool = store::connect(&cfg.postgres).await?;
        store::migrate(&pool).await.context("applying migrations")?;
        let wanted_routes: Vec<usize> = selected.iter().map(|r| r.index).collect();
        let instances = instances::of_routes(&pool, specs, |i, table| {
            wanted_routes.contains(&i) || named.is_some_and(|n| names_table(n, table))
        })
        .await?;
        let mut group = cfg.kafka.group_id.clone();
        let mut chosen: Vec<RouteSpec> = Vec::with_capacity(selected.len());
        for r in selected.into_iter().filter(|r| !r.spec.is_dynamic()) {
            let mut spec = r.spec;
            spec.table = existing_table(&pool, &spec.table).await?;
            chosen.push(spec);
        }
        anyhow::ensure!(
            !chosen.is_empty() || !instances.is_empty(),
            "no route or created table named `{}`",
            named.unwrap_or("")
        );
        if let Some(name) = &opts.shadow {
            anyhow::ensure!(
                chosen.len() == 1 && instances.is_empty(),
                "--shadow needs --route naming one route"
            );
            let shadow = shadow_beside(&chosen[0].table, name)?;
            group = rebuild_group(&group, &shadow);
            chosen[0].table = existing_table(&pool, &shadow).await?;
        }
        let mut routes = schema::resolve_routes(&pool, &chosen).await?;
        let mut folds: Vec<(Route, Option<TableSource>)> =
            routes.iter().map(|r| (r.clone(), None)).collect();
        for i in instances {
            routes.push(i.route);
            folds.push((i.fold, Some(i.source)));
        }
        Ok(Target {
            pool,
            group,
            routes,
            folds,
        })
    }
}

/// Whether `name` (as `--route` gives it) names `table`.
fn names_table(name: &str, table: &crate::types::TableName) -> bool {
    name == table.label()
        || crate::types::TableName::parse(name)
            .is_ok_and(|t| t == *table || (t.schema.is_none() && t.name == table.name))
}

/// Verifies the selected routes; `Ok` carries the report whether or not the
/// tables are equal (`report.ok`).
pub async fn verify(
    cfg: &Config,
    specs: &[RouteSpec],
    opts: &VerifyOptions,
) -> anyhow::Result<VerifyReport> {
    let started = Instant::now();
    let target = Target::resolve(cfg, specs, opts).await?;
    let client = metadata_client(cfg, "verify")?;
    let metrics = VerifyMetrics::new(&target.pool, opts.metrics_bind.as_deref()).await?;
    let mut conn = target.pool.acquire().await?;
    let (stored, snapshot_at) = open_snapshot(&mut conn, &target).await?;
    // Watermarks after the snapshot: every stored position is then within
    // the log (unless the topic was recreated).
    let logs = partition_logs(&client, &target.routes)?;
    let starts = start_offsets(&client, &logs, opts.start)?;
    let markers = marker_ranges(cfg, specs, &client, opts.start, &stored)?;
    drop(client);
    let plans = plan(&target.routes, &logs, &starts, &stored)?;
    let positions = !opts.content_only && plans.iter().all(|p| p.mode == Mode::Complete);
    let expected = create_expected(&mut conn, &target, &plans).await?;
    let folded = fold(
        &mut conn, cfg, &target, &plans, markers, &expected, &metrics,
    )
    .await?;
    tracing::info!(
        messages = folded.read,
        seconds = started.elapsed().as_secs_f64(),
        "verify: range folded into temporary copies; comparing"
    );
    let mut routes = Vec::with_capacity(plans.len());
    for (i, p) in plans.into_iter().enumerate() {
        let r = &target.routes[i];
        let cols = Columns::of(r, positions);
        let partial = p.mode == Mode::Partial;
        let c = compare::compare(
            &mut conn,
            &r.table,
            &expected[i].table,
            i,
            &cols,
            opts.samples,
            partial,
        )
        .await?;
        metrics.record(&r.table.to_string(), &c);
        routes.push(RouteReport {
            table: r.table.quoted(),
            topic: r.topic.subscription(),
            mode: p.mode,
            compared_columns: cols.names().to_vec(),
            partitions: p.partitions,
            equal: c.equal(),
            comparison: c,
        });
    }
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    metrics.stop();
    Ok(VerifyReport {
        ok: routes.iter().all(|r| r.equal),
        group: target.group,
        snapshot_at,
        messages_read: folded.read,
        dead_letters: folded.dead,
        snapshot_straddles: folded.straddles,
        seconds: started.elapsed().as_secs_f64(),
        routes,
    })
}

/// With whole source transactions the sink applied what its gate released:
/// the routes' transaction topics are read too, from the same start to
/// their stored positions (not compared), so the fold sees the same
/// transactions, commits and order.
fn marker_ranges(
    cfg: &Config,
    specs: &[RouteSpec],
    client: &rdkafka::consumer::BaseConsumer,
    start: Start,
    stored: &HashMap<TopicPartition, Offset>,
) -> anyhow::Result<Vec<Range>> {
    if !cfg.sink.source_transactions.enabled {
        return Ok(Vec::new());
    }
    let logs: Vec<PartitionLog> = partition_logs(client, specs)?
        .into_iter()
        .filter(|l| may_carry_markers(&l.tp.topic))
        .collect();
    let starts = start_offsets(client, &logs, start)?;
    Ok(logs
        .into_iter()
        .zip(starts)
        .map(|(l, from)| Range {
            to: stored.get(&l.tp).copied().unwrap_or(from).max(from),
            tp: l.tp,
            from,
        })
        .collect())
}

/// Opens the REPEATABLE READ transaction verify reads in and returns the
/// group's stored positions as of its snapshot (on Citus, one state across
/// the nodes: [`hold_commits`]).
async fn open_snapshot(
    conn: &mut PgConnection,
    target: &Target,
) -> anyhow::Result<(HashMap<TopicPartition, Offset>, String)> {
    let citus = Dialect::detect(&target.pool).await?.is_citus();
    let held = if citus {
        Some(hold_commits(&target.pool).await?)
    } else {
        None
    };
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *conn)
        .await?;
    if citus {
        sqlx::raw_sql(
            "SET LOCAL citus.max_adaptive_executor_pool_size = 1; \
             SET LOCAL citus.max_intermediate_result_size = -1",
        )
        .execute(&mut *conn)
        .await?;
    }
    let snapshot = snapshot(conn, &target.group).await?;
    if let Some(mut held) = held {
        touch_workers(conn, &target.routes).await?;
        sqlx::query("ROLLBACK").execute(&mut *held).await?;
    }
    Ok(snapshot)
}

/// Citus has no snapshot across nodes: each worker connection takes its own
/// at its first statement. So while verify fixes its snapshots, another
/// session holds `sink_offsets` in SHARE mode: that waits for commits in
/// flight (their fences hold row locks until their 2PC finished) and makes
/// new ones wait, so the coordinator's positions and every worker's rows
/// are read at one state. The hold lasts a statement per route table.
async fn hold_commits(
    pool: &sqlx::PgPool,
) -> anyhow::Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let mut held = pool.acquire().await?;
    sqlx::raw_sql("BEGIN; LOCK TABLE sink_offsets IN SHARE MODE")
        .execute(&mut *held)
        .await?;
    Ok(held)
}

/// A statement on every shard of the route tables, which fixes each
/// worker connection's snapshot (one connection per worker: the pool size
/// is 1).
async fn touch_workers(conn: &mut PgConnection, routes: &[Route]) -> anyhow::Result<()> {
    for r in routes {
        sqlx::query(&format!("SELECT 1 FROM {} LIMIT 1", r.table.quoted()))
            .fetch_optional(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The group's stored positions as of the transaction's snapshot (this is
/// its first statement, which fixes the snapshot), and the time.
async fn snapshot(
    conn: &mut PgConnection,
    group: &str,
) -> anyhow::Result<(HashMap<TopicPartition, Offset>, String)> {
    let rows = sqlx::query(
        "SELECT topic, partition, next_offset FROM sink_offsets WHERE consumer_group = $1",
    )
    .bind(group)
    .fetch_all(&mut *conn)
    .await?;
    let stored = rows
        .iter()
        .map(|r| {
            let tp = TopicPartition::new(r.get::<String, _>(0), r.get::<i32, _>(1));
            (tp, Offset(r.get(2)))
        })
        .collect();
    let at: String = sqlx::query_scalar("SELECT to_char(now(), 'YYYY-MM-DD\"T\"HH24:MI:SS.MSOF')")
        .fetch_one(&mut *conn)
        .await?;
    Ok((stored, at))
}

/// One route's ranges.
struct RoutePlan {
    mode: Mode,
    partitions: Vec<PartitionRange>,
    ranges: Vec<Range>,
}

/// Per route, the range of each of its partitions: from the chosen start
/// to the stored position. A route is `complete` when every partition is
/// read from offset 0 (or was never committed: then the table must hold
/// nothing from it).
fn plan(
    routes: &[Route],
    logs: &[PartitionLog],
    starts: &[Offset],
    stored: &HashMap<TopicPartition, Offset>,
) -> anyhow::Result<Vec<RoutePlan>> {
    let mut plans: Vec<RoutePlan> = routes
        .iter()
        .map(|_| RoutePlan {
            mode: Mode::Complete,
            partitions: Vec::new(),
            ranges: Vec::new(),
        })
        .collect();
    for (log, from) in logs.iter().zip(starts) {
        let Some(i) = routes.iter().position(|r| r.topic.matches(&log.tp.topic)) else {
            continue;
        };
        let s = stored.get(&log.tp).copied();
        if let Some(s) = s.filter(|s| *s > log.high) {
            anyhow::bail!(
                "{}: the stored position {s} is beyond the log's end {} (was the topic recreated?)",
                log.tp,
                log.high
            );
        }
        let to = s.unwrap_or(*from).max(*from);
        if from.0 > 0 && s.is_some() {
            plans[i].mode = Mode::Partial;
        }
        plans[i].partitions.push(PartitionRange {
            topic: log.tp.topic.to_string(),
            partition: log.tp.partition,
            from: from.0,
            to: to.0,
            stored: s.map(|o| o.0),
            log_start: log.low.0,
            log_end: log.high.0,
        });
        plans[i].ranges.push(Range {
            tp: log.tp.clone(),
            from: *from,
            to,
        });
    }
    Ok(plans)
}

/// A route's temporary copy and the route that writes it.
struct Expected {
    table: crate::types::TableName,
    route: Route,
}

async fn create_expected(
    conn: &mut PgConnection,
    target: &Target,
    plans: &[RoutePlan],
) -> anyhow::Result<Vec<Expected>> {
    let mut out = Vec::with_capacity(target.routes.len());
    for (i, ((r, (fold, _)), p)) in target
        .routes
        .iter()
        .zip(&target.folds)
        .zip(plans)
        .enumerate()
    {
        // A partial range is applied on top of the table's rows; the seed
        // copies every column the statements write (positions included, as
        // NOT NULL columns of document tables need them).
        let all = Columns::of(r, true);
        let seed = (p.mode == Mode::Partial).then_some(&all);
        let table = compare::create_expected(conn, &r.table, i, seed).await?;
        let mut route = fold.clone();
        route.table = table.clone();
        out.push(Expected { table, route });
    }
    Ok(out)
}

/// What folding the ranges met.
#[derive(Default)]
struct Folded {
    read: u64,
    dead: u64,
    /// Postgres changes below their partition's snapshot point, with the
    /// snapshot in the range and without whole source transactions.
    straddles: u64,
}

impl Folded {
    /// Counts a folded batch (`rejected`: its rows the database refused) and
    /// moves its snapshot points into `points`.
    fn count(
        &mut self,
        batch: &PreparedBatch,
        rejected: usize,
        points: &mut Option<SnapshotPoints>,
    ) {
        self.read += batch.counts.consumed;
        self.dead += (batch.dead_letters.len() + rejected) as u64;
        if let Some(points) = points {
            batch.straddles.absorb_into(points);
            self.straddles += batch.straddles.found.len() as u64;
        }
    }
}

/// Reads every range and folds it into the temporary copies.
async fn fold(
    conn: &mut PgConnection,
    cfg: &Config,
    target: &Target,
    plans: &[RoutePlan],
    markers: Vec<Range>,
    expected: &[Expected],
    metrics: &VerifyMetrics,
) -> anyhow::Result<Folded> {
    let mut ranges: Vec<Range> = plans.iter().flat_map(|p| p.ranges.clone()).collect();
    ranges.extend(markers);
    let total: i64 = ranges.iter().map(Range::len).sum();
    let fold_routes: Vec<Route> = expected.iter().map(|e| e.route.clone()).collect();
    let mut set = Arc::new(RouteSet::new(fold_routes.clone()));
    let writer = BatchWriter::new(
        target.pool.clone(),
        "verify",
        fold_routes,
        OnError::DeadLetter,
    );
    let copy_headers = target
        .routes
        .iter()
        .any(|r| r.columns.as_ref().is_some_and(|m| m.maps_headers()));
    let done = Arc::new(AtomicI64::new(0));
    let (tx, mut rx) = mpsc::channel(1);
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let reader = reader::spawn(
        cfg,
        ranges,
        cfg.batch.max_messages,
        copy_headers,
        done.clone(),
        tx,
        stop.clone(),
    );
    let progress = report::spawn_progress("verify".into(), done.clone(), total, stop.clone());
    let mut folded = Folded::default();
    // The sink's straddle watch, over the whole range (event::straddle).
    let mut points = (!cfg.sink.source_transactions.enabled).then(SnapshotPoints::new);
    // What the sink's admission would have let through, as it would have.
    let mut admission = ReadBack::new(&cfg.sink.source_transactions, set.clone());
    let mut last = false;
    while !last {
        let messages = match rx.recv().await {
            Some(chunk) => admission.admit(chunk?)?,
            None => {
                last = true;
                admission.rest()
            }
        };
        if messages.is_empty() {
            continue;
        }
        let batch = prepare(&target.pool, &mut set, messages, &target.folds, &points).await?;
        let counts = writer.apply_unfenced(conn, &batch).await?;
        record_keys(conn, &batch, plans).await?;
        folded.count(&batch, counts.rejected.len(), &mut points);
        metrics.progress(folded.read, done.load(Ordering::Relaxed), total);
    }
    stop.cancel();
    let _ = progress.await;
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    Ok(folded)
}

/// A chunk prepared the way the sink prepares it; the mapping of a
/// created table's schema version is added to `set` when first met.
async fn prepare(
    pool: &PgPool,
    set: &mut Arc<RouteSet>,
    messages: Vec<SourceMessage>,
    folds: &[(Route, Option<TableSource>)],
    points: &Option<SnapshotPoints>,
) -> anyhow::Result<PreparedBatch> {
    loop {
        let (s, m, p) = (set.clone(), messages.clone(), points.clone());
        let batch = tokio::task::spawn_blocking(move || {
            event::prepare_for_commit(&s, m, &SchemaSet::default(), &[], p.as_ref())
        })
        .await?;
        if batch.demands.is_empty() {
            return Ok(batch);
        }
        for d in &batch.demands {
            let source = folds[d.route]
                .1
                .as_ref()
                .context("a demand of a route that creates no tables")?;
            instances::resolve_demand(pool, Arc::make_mut(set), d, source).await?;
        }
    }
}

async fn record_keys(
    conn: &mut PgConnection,
    batch: &PreparedBatch,
    plans: &[RoutePlan],
) -> anyhow::Result<()> {
    let routes = batch.routes.as_ref().context("prepared with its routes")?;
    for (slot, w) in batch.writes.iter().enumerate() {
        let i = routes.template_of(slot);
        if plans[i].mode != Mode::Partial {
            continue;
        }
        let keys: Vec<&RowKey> = w
            .upserts
            .iter()
            .map(|u| &u.key)
            .chain(w.deletes.iter().map(|d| &d.key))
            .chain(w.pre_deletes.iter().map(|d| &d.key))
            .collect();
        compare::record_keys(conn, i, &keys).await?;
    }
    Ok(())
}

/// verify's metrics, served on `--http-bind` while it runs (a one-shot
/// command is otherwise only seen in its output).
struct VerifyMetrics {
    served: Option<(Metrics, CancellationToken)>,
    messages: IntCounter,
    progress: Gauge,
    mismatches: IntGaugeVec,
    rows: IntGaugeVec,
}

impl VerifyMetrics {
    async fn new(pool: &PgPool, bind: Option<&str>) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let messages = IntCounter::new(
            "kafka_pg_sink_verify_messages_read_total",
            "Messages verify read and folded",
        )?;
        let progress = Gauge::new(
            "kafka_pg_sink_verify_progress_ratio",
            "Share of the verified offset range read (0..1)",
        )?;
        let mismatches = IntGaugeVec::new(
            Opts::new(
                "kafka_pg_sink_verify_mismatches",
                "Rows that differ, by kind (missing, extra, different)",
            ),
            &["table", "kind"],
        )?;
        let rows = IntGaugeVec::new(
            Opts::new(
                "kafka_pg_sink_verify_rows_checked",
                "Rows of the table compared with the log's result",
            ),
            &["table"],
        )?;
        for c in [
            Box::new(messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(progress.clone()),
            Box::new(mismatches.clone()),
            Box::new(rows.clone()),
        ] {
            metrics.registry.register(c)?;
        }
        let served = match bind {
            None => None,
            Some(addr) => Some((metrics.clone(), serve(addr, &metrics, pool).await?)),
        };
        Ok(Self {
            served,
            messages,
            progress,
            mismatches,
            rows,
        })
    }

    fn progress(&self, read: u64, done: i64, total: i64) {
        self.messages.inc_by(read - self.messages.get());
        self.progress.set(if total > 0 {
            done as f64 / total as f64
        } else {
            1.0
        });
    }

    fn record(&self, table: &str, c: &compare::Comparison) {
        self.progress.set(1.0);
        self.rows.with_label_values(&[table]).set(c.rows_table);
        for (kind, n) in [
            ("missing", c.missing),
            ("extra", c.extra),
            ("different", c.different),
        ] {
            self.mismatches.with_label_values(&[table, kind]).set(n);
        }
    }

    fn stop(&self) {
        if let Some((_, cancel)) = &self.served {
            cancel.cancel();
        }
    }
}

async fn serve(addr: &str, metrics: &Metrics, pool: &PgPool) -> anyhow::Result<CancellationToken> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --http-bind {addr}"))?;
    let cancel = CancellationToken::new();
    let state = HttpState {
        metrics: metrics.clone(),
        pool: pool.clone(),
        assignment: Assignment::default(),
    };
    tokio::spawn(http::serve(listener, state, cancel.clone()));
    Ok(cancel)
}
