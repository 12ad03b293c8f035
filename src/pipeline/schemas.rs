//! Writer schemas for schema'd routes (`format = "avro" | "protobuf" |
//! "json_schema"`), looked up before a batch is prepared: the registry is
//! I/O, preparing is pure. An unreachable registry is waited out (backoff,
//! `schema_registry_up` 0, readiness false) — the batch is not prepared, so
//! nothing becomes a dead letter for it; a schema the registry does not have
//! (or that does not compile) makes its messages dead letters.
//!
//! Tables created from their schema (`create_table`) are shaped here: at
//! setup from the subject's latest version, and with `evolve =
//! "add_columns"` again whenever a message names a schema id not seen before.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::route::{Evolve, Route, RouteSpec, TopicMatcher};
use crate::format::registry::{RegistryClient, RegistryError};
use crate::format::{self, Schema, SchemaSet, Unusable};
use crate::kafka::message::SourceMessage;
use crate::ops::metrics::Metrics;
use crate::store::derived::{self, DerivedError};
use crate::store::schema::{resolve_routes, SchemaError};
use crate::store::BatchWriter;

#[derive(Debug, thiserror::Error)]
pub enum SchemasError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Derived(#[from] DerivedError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("stopped while waiting for the schema registry")]
    Cancelled,
}

/// A route whose table follows its schema: the spec (without columns) and
/// the union of the columns (name → pointer) of every version seen.
type Following = (RouteSpec, BTreeMap<String, String>);

/// The registry and the routes whose tables follow their schema.
pub struct Schemas {
    client: Arc<RegistryClient>,
    /// Routes with `create_table` and `evolve = "add_columns"`, by route index:
    /// the spec and every column any schema version seen so far gave it (a
    /// union: an older version arriving later removes nothing).
    evolving: Mutex<BTreeMap<usize, Following>>,
    /// Schema ids already applied to the evolving routes' tables.
    evolved: Mutex<HashSet<(usize, u32)>>,
}

impl Schemas {
    pub fn new(client: Arc<RegistryClient>) -> Self {
        Self {
            client,
            evolving: Mutex::new(BTreeMap::new()),
            evolved: Mutex::new(HashSet::new()),
        }
    }

    /// The schemas `messages` name, by route: waits out an unreachable
    /// registry (until `cancel`), records unknown or unusable ids as such.
    pub async fn for_batch<'m>(
        &self,
        routes: &[Route],
        messages: impl Iterator<Item = &'m SourceMessage>,
        metrics: &Metrics,
        cancel: &CancellationToken,
    ) -> Result<(SchemaSet, Vec<(usize, u32)>), SchemasError> {
        let ids = ids_by_route(routes, messages);
        let mut set = SchemaSet::default();
        for &(_, id) in &ids {
            if set.contains(id) {
                continue;
            }
            let schema = self.fetch(id, metrics, cancel).await?;
            set.insert(id, schema);
        }
        Ok((set, ids))
    }

    async fn fetch(
        &self,
        id: u32,
        metrics: &Metrics,
        cancel: &CancellationToken,
    ) -> Result<Result<Arc<Schema>, Unusable>, SchemasError> {
        let mut backoff = Backoff::database();
        loop {
            match self.client.schema(id).await {
                Ok(s) => {
                    metrics.schema_registry_up.set(1);
                    return Ok(Ok(s));
                }
                Err(e) if e.is_poison() => {
                    metrics.schema_registry_up.set(1);
                    let reason = match e {
                        RegistryError::NotFound { .. } => "unknown_schema",
                        _ => "invalid_schema",
                    };
                    return Ok(Err(Unusable {
                        reason,
                        error: e.to_string(),
                    }));
                }
                Err(e) => {
                    metrics.schema_registry_up.set(0);
                    metrics.registry_errors.inc();
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, schema_id = id, ?delay, "schema registry unavailable; waiting (nothing is dead-lettered for it)");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(SchemasError::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Adds the columns that schema versions seen for the first time bring
    /// to the tables that follow their schema, and updates those routes.
    pub async fn evolve(
        &self,
        pool: &PgPool,
        writer: &BatchWriter,
        set: &SchemaSet,
        ids: &[(usize, u32)],
    ) -> Result<(), SchemasError> {
        for &(i, id) in ids {
            let Some((spec, mut columns)) = self
                .evolving
                .lock()
                .expect("evolving lock")
                .get(&i)
                .cloned()
            else {
                continue;
            };
            if self
                .evolved
                .lock()
                .expect("evolved lock")
                .contains(&(i, id))
            {
                continue;
            }
            if let Some(schema) = set.usable().into_iter().find(|s| s.id() == id) {
                let added = derived::shape_table(pool, &spec, &schema).await?;
                let before = columns.len();
                columns.extend(added);
                if columns.len() > before {
                    let route = resolved(pool, &spec, &columns, id).await?;
                    writer.set_route(i, route);
                    tracing::info!(table = %spec.table, schema_id = id, columns = columns.len(), "route follows a new schema version");
                }
                self.evolving
                    .lock()
                    .expect("evolving lock")
                    .insert(i, (spec, columns));
            }
            self.evolved.lock().expect("evolved lock").insert((i, id));
        }
        Ok(())
    }

    /// Derives the columns of every `create_table` route from the latest
    /// value schema of its topic, creating or widening the table (setup).
    pub async fn shape_tables(
        &self,
        pool: &PgPool,
        specs: &mut [RouteSpec],
    ) -> Result<(), SchemasError> {
        // Change-event routes shape their tables from each event's schema
        // as they meet them (`pipeline::tables`).
        for (i, spec) in specs
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.from_schema && !s.is_dynamic())
        {
            let TopicMatcher::Exact(topic) = &spec.topic else {
                continue; // refused by config validation
            };
            let latest = self
                .client
                .subject_version(&format!("{topic}-value"), None)
                .await?;
            let schema = self.client.schema(latest.id).await?;
            let columns = derived::shape_table(pool, spec, &schema).await?;
            spec.columns = Some(derived::mapping(spec, &columns, schema.id())?);
            if spec.evolve == Evolve::AddColumns {
                let mut base = spec.clone();
                base.columns = None;
                self.evolving
                    .lock()
                    .expect("evolving lock")
                    .insert(i, (base, columns));
            }
        }
        Ok(())
    }
}

/// `(route index, schema id)` of every schema'd value and key in `messages`
/// (messages without a readable header decode to their own dead letter).
fn ids_by_route<'m>(
    routes: &[Route],
    messages: impl Iterator<Item = &'m SourceMessage>,
) -> Vec<(usize, u32)> {
    let mut ids = Vec::new();
    for m in messages {
        let Some(i) = routes.iter().position(|r| r.topic.matches(&m.tp.topic)) else {
            continue;
        };
        let r = &routes[i];
        let framed = [
            (r.format.is_schemad(), m.payload.as_deref()),
            (r.key_format.is_schemad(), m.key.as_deref()),
        ];
        for (schemad, bytes) in framed {
            if let (true, Some(b)) = (schemad, bytes) {
                if let Ok(id) = format::schema_id(b) {
                    if !ids.contains(&(i, id)) {
                        ids.push((i, id));
                    }
                }
            }
        }
    }
    ids
}

/// The route mapping `columns`, resolved against the (widened) table.
async fn resolved(
    pool: &PgPool,
    spec: &RouteSpec,
    columns: &BTreeMap<String, String>,
    schema_id: u32,
) -> Result<Route, SchemasError> {
    let mut spec = spec.clone();
    spec.columns = Some(derived::mapping(&spec, columns, schema_id)?);
    let mut routes = resolve_routes(pool, std::slice::from_ref(&spec)).await?;
    Ok(routes.remove(0))
}
