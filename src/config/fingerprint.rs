//! A route's mapping identity, and the selection of one route by name.
//!
//! After `promote` swaps a rebuilt table in, the live sinks must write it with
//! the mapping it was rebuilt with, or rows written after the swap would
//! follow the old mapping (a missing column, another `hash_exclude`). The
//! mapping is identified by a [`Fingerprint`]: SHA-256 over the canonical
//! JSON of the route as written, without its `table` (the rebuild writes the
//! same mapping into a differently named shadow table). Every field that
//! shapes rows is in it — topic, key, `hash_exclude`, `version`, tombstones,
//! columns and whatever later options a `[[route]]` grows — because it is the
//! serialized `RouteConfig` itself, not a hand-picked list.

use std::fmt;

use crate::config::route::{RouteConfig, RouteSpec};
use crate::config::Config;
use crate::json::hash;
use crate::types::TableName;

/// Identity of a route's mapping (hex SHA-256, see module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    pub fn of(route: &RouteConfig) -> Fingerprint {
        let mut v = serde_json::to_value(route).expect("a route serializes");
        if let Some(o) = v.as_object_mut() {
            o.remove("table");
        }
        Fingerprint(hash::hash_value(&v).to_string())
    }

    /// The first 12 hex digits, for logs and messages.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One route of a loaded configuration, with its mapping fingerprint.
#[derive(Clone, Debug)]
pub struct SelectedRoute {
    pub index: usize,
    pub spec: RouteSpec,
    pub fingerprint: Fingerprint,
}

/// The validated routes of `cfg` (`specs`, in `cfg.routes` order) with their
/// fingerprints.
pub fn fingerprinted(cfg: &Config, specs: &[RouteSpec]) -> Vec<SelectedRoute> {
    // Config::load only returns specs when every route validated, so the two
    // lists line up one to one.
    debug_assert_eq!(cfg.routes.len(), specs.len());
    cfg.routes
        .iter()
        .zip(specs)
        .enumerate()
        .map(|(index, (rc, spec))| SelectedRoute {
            index,
            spec: spec.clone(),
            fingerprint: Fingerprint::of(rc),
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("--route `{0}` names no [[route]] (give its table or its topic); routes: {1}")]
    Unknown(String, String),
}

/// The routes named by `name` (a route's table as written or quoted, with
/// or without its schema, or its topic), or every route when `name` is
/// `None`.
pub fn select(
    cfg: &Config,
    specs: &[RouteSpec],
    name: Option<&str>,
) -> Result<Vec<SelectedRoute>, SelectError> {
    let all = fingerprinted(cfg, specs);
    let Some(name) = name else { return Ok(all) };
    let wanted = TableName::parse(name).ok();
    let chosen: Vec<SelectedRoute> = all
        .iter()
        .filter(|r| {
            let rc = &cfg.routes[r.index];
            let t = &r.spec.table;
            rc.table == name
                || rc.topic == name
                || wanted
                    .as_ref()
                    .is_some_and(|w| w == t || (w.schema.is_none() && w.name == t.name))
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = cfg.routes.iter().map(|r| r.table.as_str()).collect();
        return Err(SelectError::Unknown(name.to_string(), names.join(", ")));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{local_config_path, Overrides};

    fn load(routes: &str) -> (Config, Vec<RouteSpec>) {
        let o = Overrides {
            toml: vec![routes.to_string()],
            ..Default::default()
        };
        Config::load(&local_config_path(), &o).unwrap()
    }

    const TWO: &str = "[[route]]\ntopic = \"a\"\ntable = \"public.ta\"\nkey = \"/id\"\n\
                       [[route]]\ntopic = \"b\"\ntable = \"tb\"\nkey = \"id\"\ncolumns = { id = \"/id\" }\n";

    #[test]
    fn the_fingerprint_ignores_the_table_and_follows_the_mapping() {
        let (cfg, _) = load(TWO);
        let mut moved = cfg.routes[1].clone();
        moved.table = "tb_shadow".into();
        assert_eq!(Fingerprint::of(&moved), Fingerprint::of(&cfg.routes[1]));
        let mut wider = cfg.routes[1].clone();
        wider
            .columns
            .as_mut()
            .unwrap()
            .insert("note".into(), "/note".into());
        assert_ne!(Fingerprint::of(&wider), Fingerprint::of(&cfg.routes[1]));
        let mut excl = cfg.routes[0].clone();
        excl.hash_exclude = vec!["/sent_at".into()];
        assert_ne!(Fingerprint::of(&excl), Fingerprint::of(&cfg.routes[0]));
    }

    #[test]
    fn routes_are_selected_by_table_or_topic() {
        let (cfg, specs) = load(TWO);
        let by = |n: &str| {
            select(&cfg, &specs, Some(n))
                .map(|v| v.iter().map(|r| r.index).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        };
        assert_eq!(by("public.ta"), Ok(vec![0]));
        assert_eq!(by(r#""public"."ta""#), Ok(vec![0]));
        assert_eq!(by("ta"), Ok(vec![0]));
        assert!(by("other.ta").is_err());
        assert_eq!(by("b"), Ok(vec![1]));
        assert!(by("nope").unwrap_err().contains("public.ta, tb"));
        assert_eq!(select(&cfg, &specs, None).unwrap().len(), 2);
    }
}
