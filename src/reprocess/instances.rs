//! The tables templated routes created (`sink_table_sources`), as verify
//! checks them: each is a target of its own, read from the one topic that
//! feeds it and folded the way the sink writes it — with the mapping of each
//! schema version its change events carry (`pipeline::tables`), into the
//! temporary copy instead of the table, with no DDL.

use anyhow::Context;
use sqlx::PgPool;

use crate::config::route::{Route, RouteSpec, TopicMatcher};
use crate::config::route_set::RouteSet;
use crate::event::Demand;
use crate::pipeline::tables::{instance_spec, mapped_columns, shape_of};
use crate::store::replica::{self, TableSource};
use crate::store::schema::resolve_routes;
use crate::types::TableName;

/// A table of a templated route, to verify.
pub struct Instance {
    /// The route comparing it: its table, its topic, every column its events
    /// have had.
    pub route: Route,
    /// The route folding its events: the template, on its topic only (the
    /// table becomes the temporary copy).
    pub fold: Route,
    pub source: TableSource,
}

/// The created tables of the dynamic routes among `specs` that `wanted`
/// picks (by the route's index and the table).
pub async fn of_routes(
    pool: &PgPool,
    specs: &[RouteSpec],
    wanted: impl Fn(usize, &TableName) -> bool,
) -> anyhow::Result<Vec<Instance>> {
    let mut out = Vec::new();
    for source in replica::sources(pool).await? {
        let Some(i) = specs
            .iter()
            .position(|s| s.is_dynamic() && s.topic.matches(&source.topic))
        else {
            continue;
        };
        if !wanted(i, &source.table) {
            continue;
        }
        let mut template = resolve_routes(pool, std::slice::from_ref(&specs[i]))
            .await?
            .remove(0);
        template.topic = TopicMatcher::Exact(source.topic.clone());
        // Its events land in the one table (the copy), whatever they name.
        template.template = None;
        let route = compared_route(pool, &template, &source).await?;
        out.push(Instance {
            route,
            fold: template,
            source,
        });
    }
    Ok(out)
}

/// The table's route mapping every column its events have had, keyed like
/// the table (what verify compares).
async fn compared_route(
    pool: &PgPool,
    template: &Route,
    source: &TableSource,
) -> anyhow::Result<Route> {
    let key = replica::primary_key(pool, &source.table).await?;
    anyhow::ensure!(!key.is_empty(), "table {} has no primary key", source.table);
    let demand = Demand {
        route: 0,
        table: source.table.clone(),
        topic: source.topic.as_str().into(),
        schema: None,
    };
    let columns = mapped_columns(template, &source.columns);
    let mut spec = instance_spec(template, &demand, Some((columns, key)))?;
    spec.topic = TopicMatcher::Exact(source.topic.clone());
    let route = resolve_routes(pool, std::slice::from_ref(&spec))
        .await
        .with_context(|| format!("table {}", source.table))?
        .remove(0);
    Ok(route)
}

/// Adds to `set` the instance a verify fold demands: the mapping the sink
/// uses for events of that schema version, writing `d.table` (the copy of
/// `source.table`).
pub async fn resolve_demand(
    pool: &PgPool,
    set: &mut RouteSet,
    d: &Demand,
    source: &TableSource,
) -> anyhow::Result<()> {
    let template = set.all()[d.route].clone();
    let (shape, id) = shape_of(&template, d)?;
    let mut versions = source.versions.clone();
    let written = replica::written_columns(&shape, &source.columns, &mut versions);
    let live = Demand {
        table: source.table.clone(),
        ..d.clone()
    };
    let columns = mapped_columns(&template, &written);
    let spec = instance_spec(&template, &live, Some((columns, shape.key)))?;
    // Types from the table itself: the copy has the same, but lives in this
    // session only.
    let mut route = resolve_routes(pool, std::slice::from_ref(&spec))
        .await?
        .remove(0);
    route.table = d.table.clone();
    set.put_instance(d.route, route, Some(id));
    Ok(())
}
