//! The routes a writer runs: the configured ones and the instances of their
//! templates (`config::target`), each a write slot.

use std::collections::HashMap;

use super::route::Route;
use crate::format::connect::SchemaId;
use crate::types::TableName;

/// An instance: its template, its table, the events' schema version.
type InstanceKey = (usize, TableName, Option<SchemaId>);

/// The routes a writer runs: the configured ones, in order (a template is
/// matched by topic but writes nothing itself), then the instances of its
/// templates. An index into [`Self::all`] is a write slot: a prepared
/// batch's writes and the per-table state of the writer are indexed by it.
/// Instances are only ever added or replaced, so a slot never changes table.
#[derive(Clone, Debug, Default)]
pub struct RouteSet {
    routes: Vec<Route>,
    configured: usize,
    /// Keyed by template, table and — for tables created from change
    /// events — schema version: each version writes its own columns.
    instances: HashMap<InstanceKey, usize>,
    /// Tables a template may not write, and why (`on_table_error =
    /// "dead_letter"`: their messages become dead letters).
    refused: HashMap<(usize, TableName), String>,
}

impl RouteSet {
    pub fn new(routes: Vec<Route>) -> RouteSet {
        RouteSet {
            configured: routes.len(),
            routes,
            instances: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    /// Refuses template `template`'s table `table` for `reason`.
    pub fn refuse(&mut self, template: usize, table: TableName, reason: String) {
        self.refused.insert((template, table), reason);
    }

    /// Why template `template` may not write `table`, if it may not.
    pub fn refusal(&self, template: usize, table: &TableName) -> Option<&str> {
        self.refused
            .get(&(template, table.clone()))
            .map(String::as_str)
    }

    /// Every slot's route.
    pub fn all(&self) -> &[Route] {
        &self.routes
    }

    /// The configured routes (templates included).
    pub fn configured(&self) -> &[Route] {
        &self.routes[..self.configured]
    }

    /// The first configured route whose topic matches.
    pub fn matching(&self, topic: &str) -> Option<usize> {
        self.configured()
            .iter()
            .position(|r| r.topic.matches(topic))
    }

    /// The slot of template `template`'s instance for `table` and events of
    /// schema `schema`.
    pub fn instance(
        &self,
        template: usize,
        table: &TableName,
        schema: Option<SchemaId>,
    ) -> Option<usize> {
        self.instances
            .get(&(template, table.clone(), schema))
            .copied()
    }

    /// Replaces slot `i`'s route (a table that evolved with its schema).
    pub fn replace(&mut self, i: usize, route: Route) {
        self.routes[i] = route;
    }

    /// Adds (or replaces) the instance of `template` for `route.table` and
    /// events of `schema`; returns its slot.
    pub fn put_instance(
        &mut self,
        template: usize,
        route: Route,
        schema: Option<SchemaId>,
    ) -> usize {
        let key = (template, route.table.clone(), schema);
        match self.instances.get(&key) {
            Some(&i) => {
                self.routes[i] = route;
                i
            }
            None => {
                self.routes.push(route);
                self.instances.insert(key, self.routes.len() - 1);
                self.routes.len() - 1
            }
        }
    }

    /// The configured route a slot writes for: itself, or its template.
    pub fn template_of(&self, slot: usize) -> usize {
        if slot < self.configured {
            return slot;
        }
        self.instances
            .iter()
            .find(|(_, &i)| i == slot)
            .map_or(slot, |((t, _, _), _)| *t)
    }

    /// The slots of template `template`'s instances: (table, slot).
    pub fn instances_of(&self, template: usize) -> impl Iterator<Item = (&TableName, usize)> {
        self.instances
            .iter()
            .filter(move |((t, _, _), _)| *t == template)
            .map(|((_, table, _), &i)| (table, i))
    }
}
