//! `rebuild`, `promote`, `abort` (docs/reprocessing.md).
//!
//! A rebuild is the real sink (`app::run_with`: consumer, pipeline, fenced
//! commits) run for one route with the mapping of the configuration file it
//! is given, under its own consumer group `<group>.rebuild.<shadow>` — its
//! own Kafka group and its own rows in `sink_offsets` — writing the shadow
//! table from the earliest offsets. So it is exactly-once and a SIGKILL is
//! harmless: running `rebuild` again resumes from its stored positions. It
//! keeps following the topic until it is promoted or aborted (it notices by
//! NOTIFY, or at its next commit, which the retired mapping refuses), then
//! exits 0.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use prometheus::{Gauge, IntGauge};
use rdkafka::consumer::BaseConsumer;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{existing_table, metadata_client, partition_logs, shadow_beside, PartitionLog};
use crate::app;
use crate::config::fingerprint::{self, SelectedRoute};
use crate::config::route::RouteSpec;
use crate::config::{Config, OffsetReset};
use crate::ops::metrics::Metrics;
use crate::store::mappings::MAPPINGS_CHANNEL;
use crate::store::promote::{self, PromoteReport, PromoteRequest};
use crate::store::shadow::{self, RebuildSpec, RebuildState, Registered};
use crate::store::{self, offsets, StoreError};
use crate::types::{Offset, TableName, TopicPartition};

/// The one route `name` selects, the pool, and the rebuild it concerns.
struct Subject {
    route: SelectedRoute,
    pool: PgPool,
    spec: RebuildSpec,
}

impl Subject {
    async fn resolve(
        cfg: &Config,
        specs: &[RouteSpec],
        name: &str,
        shadow: &str,
    ) -> anyhow::Result<Subject> {
        let mut found = fingerprint::select(cfg, specs, Some(name))?;
        anyhow::ensure!(found.len() == 1, "--route `{name}` names several routes");
        let route = found.remove(0);
        let pool = store::connect(&cfg.postgres).await?;
        store::migrate(&pool).await.context("applying migrations")?;
        let live = existing_table(&pool, &route.spec.table).await?;
        let shadow = shadow_beside(&live, shadow)?;
        let spec = RebuildSpec {
            live_group: cfg.kafka.group_id.clone(),
            rebuild_group: shadow::rebuild_group(&cfg.kafka.group_id, &shadow),
            live,
            shadow,
            fingerprint: route.fingerprint.clone(),
        };
        Ok(Subject { route, pool, spec })
    }
}

/// How a rebuild run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RebuildEnd {
    Promoted,
    Aborted,
    /// Stopped by a signal; run `rebuild` again to resume.
    Stopped,
}

/// Runs the rebuild of route `name` into `shadow` until it is promoted,
/// aborted, or `cancel` fires.
pub async fn run(
    cfg: Config,
    specs: Vec<RouteSpec>,
    name: &str,
    shadow: &str,
    cancel: CancellationToken,
) -> anyhow::Result<RebuildEnd> {
    let s = Subject::resolve(&cfg, &specs, name, shadow).await?;
    let how = match shadow::register(&s.pool, &s.spec).await? {
        Registered::Resumed => "rebuild resumed from its stored positions",
        Registered::Started { previous: None } => {
            "rebuild started: filling the shadow from the earliest offsets"
        }
        Registered::Started { previous: Some(_) } => {
            "a NEW rebuild started (the previous one of this name had finished): \
             filling the shadow from the earliest offsets"
        }
    };
    tracing::info!(
        live = %s.spec.live, shadow = %s.spec.shadow, group = %s.spec.rebuild_group,
        mapping = s.spec.fingerprint.short(), "{how}"
    );
    let mut rcfg = cfg.clone();
    rcfg.kafka.group_id = s.spec.rebuild_group.clone();
    rcfg.kafka.auto_offset_reset = OffsetReset::Earliest;
    // Positions live in Postgres; a Kafka copy would outlive the rebuild.
    rcfg.sink.commit_to_kafka = false;
    let mut route = s.route.clone();
    route.spec.table = s.spec.shadow.clone();
    let metrics = Metrics::new();
    let round = cancel.child_token();
    let watcher = tokio::spawn(stop_when_finished(
        s.pool.clone(),
        s.spec.rebuild_group.clone(),
        round.clone(),
    ));
    let monitor = tokio::spawn(monitor(
        cfg,
        s.route.spec.clone(),
        s.spec.clone(),
        s.pool.clone(),
        metrics.clone(),
    ));
    let result = app::run_with(rcfg, vec![route], metrics, round).await;
    watcher.abort();
    monitor.abort();
    let state = shadow::status(&s.pool, &s.spec.rebuild_group)
        .await?
        .map(|r| r.state);
    match (state, result) {
        (Some(RebuildState::Promoted), _) => Ok(RebuildEnd::Promoted),
        (Some(RebuildState::Aborted), _) => Ok(RebuildEnd::Aborted),
        (_, Ok(())) => Ok(RebuildEnd::Stopped),
        (_, Err(e)) => Err(e),
    }
}

/// Stops the run when a promote or abort of this rebuild is announced.
async fn stop_when_finished(pool: PgPool, group: String, round: CancellationToken) {
    let Ok(mut l) = PgListener::connect_with(&pool).await else {
        return; // the retired mapping stops it at its next commit
    };
    if l.listen(MAPPINGS_CHANNEL).await.is_err() {
        return;
    }
    while let Ok(n) = l.recv().await {
        if n.payload() == group {
            return round.cancel();
        }
    }
}

/// Every 10 s: logs how far the rebuild is, against the log end and against
/// the live group, and sets `kafka_pg_sink_rebuild_*` gauges.
async fn monitor(cfg: Config, route: RouteSpec, spec: RebuildSpec, pool: PgPool, metrics: Metrics) {
    let Ok(client) = metadata_client(&cfg, "rebuild-monitor") else {
        return;
    };
    let behind = IntGauge::new(
        "kafka_pg_sink_rebuild_behind_live_messages",
        "Messages the live group has applied that the rebuild has not (0: promote loses nothing of the live table)",
    )
    .expect("valid metric");
    let progress = Gauge::new(
        "kafka_pg_sink_rebuild_progress_ratio",
        "Share of the topic's current log the rebuild has applied (0..1)",
    )
    .expect("valid metric");
    let _ = metrics.registry.register(Box::new(behind.clone()));
    let _ = metrics.registry.register(Box::new(progress.clone()));
    let mut caught_up = false;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Ok(p) = measure(&client, &route, &spec, &pool).await else {
            continue;
        };
        behind.set(p.behind_live);
        progress.set(p.ratio());
        tracing::info!(
            applied = p.applied,
            total = p.total,
            behind_live = p.behind_live,
            "rebuild progress"
        );
        if p.behind_live == 0 && !caught_up {
            tracing::info!("the rebuild has caught up with the live group: `promote` when ready");
        }
        caught_up = p.behind_live == 0;
    }
}

struct Progress {
    applied: i64,
    total: i64,
    behind_live: i64,
}

impl Progress {
    fn ratio(&self) -> f64 {
        if self.total > 0 {
            self.applied as f64 / self.total as f64
        } else {
            1.0
        }
    }
}

async fn measure(
    client: &BaseConsumer,
    route: &RouteSpec,
    spec: &RebuildSpec,
    pool: &PgPool,
) -> anyhow::Result<Progress> {
    let logs = tokio::task::block_in_place(|| partition_logs(client, std::slice::from_ref(route)))?;
    let tps: Vec<TopicPartition> = logs.iter().map(|l| l.tp.clone()).collect();
    let live = offsets::read(pool, &spec.live_group, &tps).await?;
    let rebuilt = offsets::read(pool, &spec.rebuild_group, &tps).await?;
    Ok(progress_of(&logs, &live, &rebuilt))
}

fn progress_of(
    logs: &[PartitionLog],
    live: &HashMap<TopicPartition, Offset>,
    rebuilt: &HashMap<TopicPartition, Offset>,
) -> Progress {
    let mut p = Progress {
        applied: 0,
        total: 0,
        behind_live: 0,
    };
    for l in logs {
        let r = rebuilt.get(&l.tp).copied().unwrap_or(l.low).max(l.low);
        p.applied += r.0 - l.low.0;
        p.total += l.high.0 - l.low.0;
        if let Some(v) = live.get(&l.tp) {
            p.behind_live += (v.0 - r.0).max(0);
        }
    }
    p
}

#[derive(Clone, Debug)]
pub struct PromoteOptions {
    pub route: String,
    pub shadow: String,
    pub retire_as: Option<String>,
    pub max_lag: Option<i64>,
    pub dry_run: bool,
}

/// Promotes the rebuild of `route` into `shadow` (store/shadow.rs does the
/// transaction). Retried on a deadlock with a live commit (Postgres picks
/// one side; the sink retries its own).
pub async fn promote(
    cfg: &Config,
    specs: &[RouteSpec],
    opts: &PromoteOptions,
) -> anyhow::Result<PromoteReport> {
    let s = Subject::resolve(cfg, specs, &opts.route, &opts.shadow).await?;
    let logs = partition_logs(
        &metadata_client(cfg, "promote")?,
        std::slice::from_ref(&s.route.spec),
    )?;
    let req = PromoteRequest {
        rebuild_group: s.spec.rebuild_group.clone(),
        partitions: logs.iter().map(|l| (l.tp.clone(), l.low)).collect(),
        retire_as: opts.retire_as.clone(),
        max_lag: opts.max_lag,
        dry_run: opts.dry_run,
    };
    let mut attempts = 0;
    let report = loop {
        match promote::promote(&s.pool, &req).await {
            Err(shadow::ShadowError::Database(e)) if store::is_transient(&e) && attempts < 5 => {
                attempts += 1;
                tracing::warn!(error = %StoreError::from(e), "promote: transient error; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
            }
            other => break other?,
        }
    };
    if report.fingerprint != s.spec.fingerprint.0 {
        tracing::warn!(
            promoted = &report.fingerprint[..12],
            this_file = s.spec.fingerprint.short(),
            "this configuration file maps the route differently from the rebuild: live sinks hold \
             the route back until their configuration maps what the rebuild used"
        );
    }
    Ok(report)
}

/// Aborts the rebuild of `route` into `shadow`; false if already aborted.
pub async fn abort(
    cfg: &Config,
    specs: &[RouteSpec],
    route: &str,
    shadow: &str,
) -> anyhow::Result<(bool, TableName)> {
    let s = Subject::resolve(cfg, specs, route, shadow).await?;
    let done = shadow::abort(&s.pool, &s.spec.rebuild_group).await?;
    Ok((done, s.spec.shadow))
}
