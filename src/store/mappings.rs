//! Which route mapping may write a table (`sink_route_mappings`), checked
//! inside every commit transaction.
//!
//! `promote` (store/shadow.rs) swaps a rebuilt table in and records, in the
//! same transaction, the fingerprint of the mapping it was built with. A sink
//! still running the old mapping must not write one more row into the new
//! table — not even a batch it prepared before the swap whose positions
//! happen to match the promoted ones, which the offset fence alone would let
//! through. So the fence checks the mappings right after it moved the
//! positions (`sink_fence`, one round trip): the fence holds the partitions'
//! `sink_offsets` rows, and `promote` locks those same rows before it changes
//! anything, so either this commit finishes before the promote starts (and
//! wrote the old table under the old positions), or the promote committed
//! first and the check, a statement of the function with a new snapshot,
//! sees its fingerprint and refuses the batch.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool, Row};

use crate::config::fingerprint::Fingerprint;
use crate::types::TableName;

/// LISTEN/NOTIFY channel: a promote or abort changed the mappings of the
/// group in the payload (live sinks reload their configuration; a rebuild
/// whose shadow was promoted or dropped stops).
pub const MAPPINGS_CHANNEL: &str = "kafka_pg_sink_mappings";

/// The fingerprint stored for a rebuild group whose shadow was promoted or
/// dropped: matches no mapping, so that group can no longer commit.
pub const RETIRED: &str = "retired";

/// The schema-qualified name of an existing table (`None`: no such table),
/// so `t` and `public.t` in two configurations name one registry row; its
/// `quoted()` form (`"public"."t"`) is what the registry tables store.
pub async fn canonical_table(
    conn: &mut PgConnection,
    table: &TableName,
) -> Result<Option<TableName>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
    )
    .bind(table.quoted())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| TableName {
        schema: Some(r.get(0)),
        name: r.get(1),
    }))
}

/// The mappings a writer runs: per table it writes (canonical name), the
/// fingerprint of its route, checked by the fence (`store/fence.rs`) against
/// the writer's group. Empty: no check (direct-store tests, tools).
#[derive(Clone, Debug, Default)]
pub struct MappingGuard {
    tables: Vec<(String, Fingerprint)>,
}

impl MappingGuard {
    pub fn new(tables: Vec<(String, Fingerprint)>) -> Self {
        Self { tables }
    }

    /// The tables and their fingerprints, as two parallel arrays to bind.
    pub(super) fn columns(&self) -> (Vec<&str>, Vec<&str>) {
        self.tables
            .iter()
            .map(|(t, f)| (t.as_str(), f.0.as_str()))
            .unzip()
    }
}

/// The stored mapping of every table of `group`: canonical table → fingerprint.
pub async fn stored(pool: &PgPool, group: &str) -> Result<HashMap<String, String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT table_name, fingerprint FROM sink_route_mappings WHERE consumer_group = $1",
    )
    .bind(group)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
