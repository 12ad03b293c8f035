//! Tables met while the sink runs. A prepared batch lists what its messages
//! need and the routes do not have yet (`event::Demand`): a table a
//! templated route meets for the first time, or a schema a created table
//! was not shaped for. Here each is created or evolved (`store::replica`),
//! resolved against the catalog, and added to the writer's routes as an
//! instance; the pipeline then prepares the batch again.

use std::collections::BTreeMap;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

use crate::config::columns::ColumnSpec;
use crate::config::route::{Route, RouteSpec, RowKeySource, DEFAULT_CDC_POSITION};
use crate::event::Demand;
use crate::format::connect;
use crate::format::pointer_token;
use crate::store::replica::{self, ReplicaError, Source};
use crate::store::schema::{ensure_tables, resolve_routes, SchemaError};
use crate::store::{is_transient, BatchWriter};

#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    /// The table cannot be created or evolved as the events need: its
    /// partitions cannot go on without an operator.
    #[error(transparent)]
    Refused(#[from] ReplicaError),
    #[error("table {table}: {problem}")]
    Unfit { table: String, problem: String },
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl TablesError {
    /// The table cannot take the events (not the database's fault).
    fn refusal(&self) -> Option<String> {
        match self {
            TablesError::Refused(ReplicaError::Refused { problem, .. })
            | TablesError::Unfit { problem, .. } => Some(problem.clone()),
            TablesError::Schema(SchemaError::Unusable(problems)) => Some(problems.join("; ")),
            _ => None,
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            TablesError::Database(e)
            | TablesError::Refused(ReplicaError::Database(e))
            | TablesError::Schema(SchemaError::Database(e)) => is_transient(e),
            _ => false,
        }
    }
}

/// A table that cannot take its events, and why.
#[derive(Debug)]
pub struct Refusal {
    pub demand: Demand,
    pub problem: String,
}

/// Creates or evolves the tables `demands` name and adds them to the
/// writer's routes; returns the tables that cannot be made to fit. A lost
/// connection is retried until the database answers (or `cancel`).
pub async fn resolve(
    pool: &PgPool,
    writer: &BatchWriter,
    demands: &[Demand],
    cancel: &CancellationToken,
) -> Result<Vec<Refusal>, TablesError> {
    let mut refusals = Vec::new();
    for d in demands {
        let mut backoff = Backoff::database();
        loop {
            let e = match resolve_one(pool, writer, d).await {
                Ok(()) => break,
                Err(e) => e,
            };
            if let Some(problem) = e.refusal() {
                refusals.push(Refusal {
                    demand: d.clone(),
                    problem,
                });
                break;
            }
            if !e.is_transient() {
                return Err(e);
            }
            let delay = backoff.next_delay();
            tracing::warn!(error = %e, table = %d.table, ?delay, "creating the table failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return Ok(refusals),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
    Ok(refusals)
}

async fn resolve_one(pool: &PgPool, writer: &BatchWriter, d: &Demand) -> Result<(), TablesError> {
    let template = writer.routes().all()[d.route].clone();
    let (spec, schema_id) = if template.from_schema {
        instance_from_schema(pool, writer, &template, d).await?
    } else {
        let spec = instance_spec(&template, d, None)?;
        ensure_tables(pool, std::slice::from_ref(&spec)).await?;
        replica::claim_only(pool, &spec.table, &d.topic, writer.group()).await?;
        (spec, None)
    };
    let route = resolve_routes(pool, std::slice::from_ref(&spec))
        .await?
        .remove(0);
    let slot = writer.update_routes(|set| set.put_instance(d.route, route, schema_id));
    tracing::info!(route = %template.table, table = %d.table, topic = %d.topic, slot, "writing a table met while running");
    Ok(())
}

/// The instance of a table created from change events: the table created
/// or evolved to fit the event's schema, mapped column by column.
async fn instance_from_schema(
    pool: &PgPool,
    writer: &BatchWriter,
    template: &Route,
    d: &Demand,
) -> Result<(RouteSpec, Option<connect::SchemaId>), TablesError> {
    let (shape, schema_id) = shape_of(template, d)?;
    let source = Source {
        topic: &d.topic,
        group: writer.group(),
        evolve: template.evolve,
        position_column: &template.position_column,
    };
    let shaped = replica::ensure(pool, &d.table, &shape, &source).await?;
    if shaped.created || !shaped.changes.is_empty() {
        tracing::info!(table = %d.table, created = shaped.created, changes = ?shaped.changes, "shaped the table for the change events' schema");
    }
    let columns = mapped_columns(template, &shaped.columns);
    let spec = instance_spec(template, d, Some((columns, shape.key)))?;
    Ok((spec, Some(schema_id)))
}

/// The table a demand's change event describes, and its schema's id; the
/// route's `key`, when configured, overrides the Kafka key's.
pub fn shape_of(
    template: &Route,
    d: &Demand,
) -> Result<(connect::TableShape, connect::SchemaId), TablesError> {
    let unfit = |problem: String| TablesError::Unfit {
        table: d.table.to_string(),
        problem,
    };
    let schema = d.schema.as_ref().ok_or_else(|| {
        unfit(
            "create_table needs change events that carry their schema (the JSON converter \
             with schemas.enable=true, or a registry format)"
                .into(),
        )
    })?;
    let key_schema = schema.key.as_ref().map(|k| &k.schema);
    let mut shape = connect::debezium_shape(&schema.value.schema, key_schema).map_err(unfit)?;
    if let RowKeySource::Columns(key) = &template.key {
        if !key.is_empty() {
            shape.key = key.clone();
        }
    }
    Ok((shape, schema.value.id))
}

/// Each written column read from its field, and the position column.
pub fn mapped_columns(template: &Route, written: &[String]) -> BTreeMap<String, String> {
    let mut columns: BTreeMap<String, String> = written
        .iter()
        .map(|c| (c.clone(), format!("/{}", pointer_token(c))))
        .collect();
    columns.insert(
        template.position_column.clone(),
        DEFAULT_CDC_POSITION.to_string(),
    );
    columns
}

/// A concrete route for the demanded table: the template's settings, its
/// table, and (tables created from events) its column mapping and key.
pub fn instance_spec(
    template: &Route,
    d: &Demand,
    typed: Option<(BTreeMap<String, String>, Vec<String>)>,
) -> Result<RouteSpec, TablesError> {
    let mut spec: RouteSpec = template
        .clone()
        .map_columns(|_| Err::<ColumnSpec, TablesError>(unreachable_columns()))?;
    spec.table = d.table.clone();
    spec.template = None;
    spec.from_schema = false;
    if let Some((columns, key)) = typed {
        let mut problems = Vec::new();
        let version = Some(DEFAULT_CDC_POSITION);
        let map = ColumnSpec::from_config("table", &columns, &key, version, true, &mut problems);
        spec.columns = Some(map.ok_or_else(|| TablesError::Unfit {
            table: d.table.to_string(),
            problem: problems.join("; "),
        })?);
        spec.key = RowKeySource::Columns(key);
        spec.version = version.map(str::to_string);
    }
    Ok(spec)
}

fn unreachable_columns() -> TablesError {
    TablesError::Unfit {
        table: String::new(),
        problem: "a route with a table per source maps no `columns`".into(),
    }
}
