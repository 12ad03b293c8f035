//! The live sink across promotes (docs/reprocessing.md, "Promote").
//!
//! `promote` swaps a rebuilt table in and records the mapping it was built
//! with. A running sink then must write that table with that mapping, so
//! this loop runs the sink (`app::run_with`) with the routes whose mapping
//! matches what was promoted, and starts it again — same process, same
//! metrics, a new consumer and pipeline — with the configuration file read
//! again when:
//! * a promote of its group is announced (NOTIFY on `MAPPINGS_CHANNEL`), or
//! * a commit was refused because a promote replaced a mapping it runs
//!   (`StoreError::MappingReplaced`; covers a missed NOTIFY), or
//! * a route is held back and the configuration file changed.
//!
//! A route whose mapping differs from the promoted one is not run at all
//! (its partitions are not consumed) and the reason is logged, until the
//! operator updates the file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::fingerprint::{self, SelectedRoute};
use crate::config::route::RouteSpec;
use crate::config::{Config, Overrides};
use crate::ops::metrics::Metrics;
use crate::pipeline::PipelineError;
use crate::store::mappings::{self, canonical_table, MAPPINGS_CHANNEL};
use crate::store::{self, StoreError};

/// Where the configuration comes from, to read it again.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub overrides: Overrides,
}

/// How often a sink holding back a route looks at its configuration file.
const FILE_CHECK: Duration = Duration::from_secs(2);

/// Runs the sink until `cancel` fires or a fatal error.
pub async fn run(
    source: ConfigSource,
    cfg: Config,
    specs: Vec<RouteSpec>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (mut cfg, mut specs) = (cfg, specs);
    loop {
        let (active, held) = split_by_promoted(&cfg, &specs).await?;
        let round = cancel.child_token();
        let watcher = tokio::spawn(watch(
            cfg.clone(),
            source.clone(),
            !held.is_empty(),
            round.clone(),
        ));
        let result = if active.is_empty() {
            tracing::error!("no route can run; waiting for the configuration file to change");
            round.cancelled().await;
            Ok(())
        } else {
            app::run_with(cfg.clone(), active, metrics.clone(), round.clone()).await
        };
        watcher.abort();
        if cancel.is_cancelled() {
            return result;
        }
        match result {
            Ok(()) => tracing::info!("route mappings changed: reading the configuration again"),
            Err(e) if replaced_mapping(&e) => {
                tracing::warn!(error = %e, "reading the configuration again")
            }
            Err(e) => return Err(e),
        }
        match reload(&source, &cancel).await {
            Some((c, s)) => (cfg, specs) = (c, s),
            None => return Ok(()),
        }
    }
}

fn replaced_mapping(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<PipelineError>(),
        Some(PipelineError::Store(StoreError::MappingReplaced(_)))
    )
}

/// The routes whose mapping matches the one promoted for their table (or
/// whose table was never promoted), and the others, each logged.
async fn split_by_promoted(
    cfg: &Config,
    specs: &[RouteSpec],
) -> anyhow::Result<(Vec<SelectedRoute>, Vec<SelectedRoute>)> {
    let pool = store::connect(&cfg.postgres).await?;
    store::migrate(&pool).await.context("applying migrations")?;
    let stored = mappings::stored(&pool, &cfg.kafka.group_id).await?;
    let mut conn = pool.acquire().await?;
    let (mut active, mut held) = (Vec::new(), Vec::new());
    for r in fingerprint::fingerprinted(cfg, specs) {
        let table = canonical_table(&mut conn, &r.spec.table).await?;
        match table.and_then(|t| stored.get(&t.quoted()).cloned()) {
            Some(promoted) if promoted != r.fingerprint.0 => {
                tracing::error!(
                    table = %r.spec.table,
                    runs = r.fingerprint.short(),
                    promoted = &promoted[..promoted.len().min(12)],
                    "this route's mapping is not the one promoted for its table; the route is not \
                     written until the configuration file maps what the rebuild used"
                );
                held.push(r);
            }
            _ => active.push(r),
        }
    }
    drop(conn);
    pool.close().await;
    Ok((active, held))
}

/// Cancels `round` when a promote of this group is announced, or, while a
/// route is held back, when the configuration file changes.
async fn watch(cfg: Config, source: ConfigSource, held: bool, round: CancellationToken) {
    let group = cfg.kafka.group_id.clone();
    let mut listener = match listen(&cfg).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "LISTEN for promotes failed; noticed at the next commit");
            None
        }
    };
    let file = std::fs::read(&source.path).ok();
    let mut tick = tokio::time::interval(FILE_CHECK);
    loop {
        tokio::select! {
            n = async { listener.as_mut().expect("guarded").recv().await }, if listener.is_some() => {
                if n.is_ok_and(|n| n.payload() == group) {
                    return round.cancel();
                }
            }
            _ = tick.tick(), if held => {
                if std::fs::read(&source.path).ok() != file {
                    return round.cancel();
                }
            }
            _ = round.cancelled() => return,
        }
    }
}

async fn listen(cfg: &Config) -> anyhow::Result<PgListener> {
    let pool = store::connect(&cfg.postgres).await?;
    let mut l = PgListener::connect_with(&pool).await?;
    l.listen(MAPPINGS_CHANNEL).await?;
    Ok(l)
}

/// The configuration read again; an invalid file is logged and read again
/// until it is valid (the sink keeps its old routes stopped meanwhile).
/// `None` when `cancel` fires first.
async fn reload(
    source: &ConfigSource,
    cancel: &CancellationToken,
) -> Option<(Config, Vec<RouteSpec>)> {
    loop {
        match Config::load(&source.path, &source.overrides) {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::error!(error = %e, "configuration file is invalid; reading it again")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(FILE_CHECK) => {}
        }
    }
}
