//! Tables created and evolved from change events' schemas: a templated
//! route's instances (`table = "replica.${source.table}"`), or a change-event
//! route with `create_table = true`.
//!
//! [`ensure`] runs in a transaction of its own, before the batch that needs
//! the table, serialized with other replicas by an advisory lock:
//!
//! 1. the table is claimed for its topic (`sink_table_sources`): a second
//!    topic that would land in it is refused with both names;
//! 2. a missing table is created — the event's columns in source order with
//!    the types `format::connect` derives, the source position column, the
//!    Kafka key's columns as primary key;
//! 3. an existing one is compared with the shape: a new field becomes a
//!    column (with the source's default, which the source gave existing
//!    rows); a column whose type widens (`varchar(20)` → `varchar(50)`,
//!    `integer` → `bigint`, `numeric(10,2)` → `numeric(12,2)`) is altered; a
//!    column the source dropped stays and loses NOT NULL (rows written from
//!    then on hold NULL there) — each only with `evolve = "add_columns"`. A
//!    change that would lose data (a narrower type, another primary key) is
//!    refused, naming the column.
//!
//! It returns the columns an event of this schema version writes: its own,
//! and NULL into those an earlier version had and it lacks (dropped at the
//! source). Columns added by later versions are not written: an older event
//! says nothing about them (a row it inserts takes the column's default,
//! which the source gave its rows when the column was added). The versions
//! seen are recorded in `sink_table_sources`, in the order first seen,
//! across restarts and replicas.

use sqlx::{PgConnection, PgPool, Row};

use crate::config::route::Evolve;
use crate::format::connect::{ColumnDef, TableShape};
use crate::types::{quote_ident, TableName};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("table {table}: {problem}")]
    Refused { table: String, problem: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What [`ensure`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shaped {
    /// The columns events of this schema version write (the position
    /// column not among them).
    pub columns: Vec<String>,
    pub created: bool,
    /// Columns added, altered, or relaxed to nullable: `ADD c`, `TYPE c`, `NULL c`.
    pub changes: Vec<String>,
}

/// Where the table comes from and how it may change.
pub struct Source<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    pub evolve: Evolve,
    pub position_column: &'a str,
}

/// Makes `table` fit `shape` (see the module docs).
pub async fn ensure(
    pool: &PgPool,
    table: &TableName,
    shape: &TableShape,
    source: &Source<'_>,
) -> Result<Shaped, ReplicaError> {
    let refused = |problem: String| ReplicaError::Refused {
        table: table.to_string(),
        problem,
    };
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kafka-pg-sink setup'))")
        .execute(&mut *tx)
        .await?;
    let (known, mut versions) = claim(&mut tx, table, source).await?.map_err(refused)?;
    let canonical = canonical_types(&mut tx, shape).await?;
    let existing = table_columns(&mut tx, table).await?;
    let mut shaped = Shaped::default();
    if existing.is_empty() {
        create(&mut tx, table, shape, source.position_column).await?;
        shaped.created = true;
    } else {
        let plan = plan_changes(shape, &canonical, &existing, &known, source).map_err(refused)?;
        check_key(&mut tx, table, shape).await?.map_err(refused)?;
        for (sql, change) in plan {
            sqlx::query(&format!("ALTER TABLE {} {sql}", table.quoted()))
                .execute(&mut *tx)
                .await?;
            shaped.changes.push(change);
        }
    }
    let mut columns = known;
    for c in &shape.columns {
        if !columns.contains(&c.name) {
            columns.push(c.name.clone());
        }
    }
    shaped.columns = written_columns(shape, &columns, &mut versions);
    sqlx::query(
        "UPDATE sink_table_sources SET columns = $2, versions = $3, updated_at = now() \
         WHERE table_name = $1",
    )
    .bind(table.quoted())
    .bind(serde_json::to_value(&columns).expect("names serialize"))
    .bind(serde_json::to_value(&versions).expect("names serialize"))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(shaped)
}

/// The columns an event of `shape`'s version writes: its own, and those an
/// earlier version (in `versions`, first seen first; `shape`'s is added if
/// new) had and it lacks. `all` is every column seen, in order.
pub(crate) fn written_columns(
    shape: &TableShape,
    all: &[String],
    versions: &mut Vec<Vec<String>>,
) -> Vec<String> {
    let own: Vec<String> = shape.columns.iter().map(|c| c.name.clone()).collect();
    let same = |v: &Vec<String>| v.len() == own.len() && own.iter().all(|c| v.contains(c));
    let at = match versions.iter().position(same) {
        Some(i) => i,
        None => {
            versions.push(own.clone());
            versions.len() - 1
        }
    };
    all.iter()
        .filter(|c| own.contains(c) || versions[..at].iter().any(|v| v.contains(c)))
        .cloned()
        .collect()
}

/// A table the sink created from change events, as recorded.
#[derive(Clone, Debug)]
pub struct TableSource {
    pub table: TableName,
    pub topic: String,
    /// Every column its events have had, in order.
    pub columns: Vec<String>,
    /// The column sets of its schema versions, first seen first.
    pub versions: Vec<Vec<String>>,
}

/// The tables recorded in `sink_table_sources`.
pub async fn sources(pool: &PgPool) -> Result<Vec<TableSource>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT table_name, topic, columns, versions FROM sink_table_sources ORDER BY table_name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(TableSource {
                table: TableName::parse(&r.get::<String, _>(0)).ok()?,
                topic: r.get(1),
                columns: serde_json::from_value(r.get(2)).unwrap_or_default(),
                versions: serde_json::from_value(r.get(3)).unwrap_or_default(),
            })
        })
        .collect())
}

/// The primary key columns of `table`, in key order.
pub async fn primary_key(pool: &PgPool, table: &TableName) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o) \
         JOIN pg_attribute a ON a.attnum = k.n \
         WHERE i.indrelid = to_regclass($1) AND i.indisprimary AND a.attrelid = i.indrelid \
         ORDER BY k.o",
    )
    .bind(table.quoted())
    .fetch_all(pool)
    .await
}

/// Claims a table the sink creates in its fixed shape (a templated
/// document route's) for its topic, in a transaction of its own.
pub async fn claim_only(
    pool: &PgPool,
    table: &TableName,
    topic: &str,
    group: &str,
) -> Result<(), ReplicaError> {
    let source = Source {
        topic,
        group,
        evolve: Evolve::None,
        position_column: "",
    };
    let mut tx = pool.begin().await?;
    claim(&mut tx, table, &source)
        .await?
        .map_err(|problem| ReplicaError::Refused {
            table: table.to_string(),
            problem,
        })?;
    tx.commit().await?;
    Ok(())
}

/// The columns and versions recorded for a table.
type Recorded = (Vec<String>, Vec<Vec<String>>);

/// Claims `table` for the topic; the columns and versions recorded so far,
/// or why not.
async fn claim(
    conn: &mut PgConnection,
    table: &TableName,
    source: &Source<'_>,
) -> Result<Result<Recorded, String>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO sink_table_sources (table_name, topic, consumer_group) VALUES ($1, $2, $3) \
         ON CONFLICT (table_name) DO NOTHING",
    )
    .bind(table.quoted())
    .bind(source.topic)
    .bind(source.group)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(
        "SELECT topic, columns, versions FROM sink_table_sources WHERE table_name = $1",
    )
    .bind(table.quoted())
    .fetch_one(&mut *conn)
    .await?;
    let topic: String = row.get(0);
    if topic != source.topic {
        return Ok(Err(format!(
            "is fed by topic `{topic}`; topic `{}` renders the same table and is refused, \
             never mixed in (give the route's `table` a placeholder that tells them apart)",
            source.topic
        )));
    }
    let parse = |i: usize| row.get::<serde_json::Value, _>(i);
    Ok(Ok((
        serde_json::from_value(parse(1)).unwrap_or_default(),
        serde_json::from_value(parse(2)).unwrap_or_default(),
    )))
}

/// Each shape column's type as Postgres prints it (`format_type`), read
/// off a temporary table with those types: `varchar(20)` and
/// `character varying(20)` compare equal, and a type Postgres does not know
/// fails here, before any DDL.
async fn canonical_types(
    conn: &mut PgConnection,
    shape: &TableShape,
) -> Result<Vec<String>, sqlx::Error> {
    let defs: Vec<String> = shape
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("c{i} {}", c.pg_type))
        .collect();
    // Quiets the notices of `IF EXISTS` for the rest of the transaction.
    sqlx::query("SET LOCAL client_min_messages = warning")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DROP TABLE IF EXISTS pg_temp.kpgs_shape")
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "CREATE TEMP TABLE kpgs_shape ({}) ON COMMIT DROP",
        defs.join(", ")
    ))
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'pg_temp.kpgs_shape'::regclass AND attnum > 0 ORDER BY attnum",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A column of the existing table.
struct Existing {
    name: String,
    sql_type: String,
    not_null: bool,
}

async fn table_columns(
    conn: &mut PgConnection,
    table: &TableName,
) -> Result<Vec<Existing>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
         WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(table.quoted())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Existing {
            name: r.get(0),
            sql_type: r.get(1),
            not_null: r.get(2),
        })
        .collect())
}

async fn create(
    conn: &mut PgConnection,
    table: &TableName,
    shape: &TableShape,
    position_column: &str,
) -> Result<(), sqlx::Error> {
    if let Some(s) = &table.schema {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)))
            .execute(&mut *conn)
            .await?;
    }
    let mut cols: Vec<String> = shape
        .columns
        .iter()
        .map(|c| {
            let key = shape.key.contains(&c.name);
            let null = if key || !c.nullable { " NOT NULL" } else { "" };
            format!("{}{null}{}", column_def(c), default_clause(c))
        })
        .collect();
    // Computed positions can pass 2⁶³ (`store::versions`).
    cols.push(format!("{} numeric", quote_ident(position_column)));
    let key: Vec<String> = shape.key.iter().map(|k| quote_ident(k)).collect();
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
        table.quoted(),
        cols.join(", "),
        key.join(", ")
    ))
    .execute(&mut *conn)
    .await?;
    // On Citus, sharded by the first key column.
    super::dialect::distribute(conn, table, &shape.key[0], None).await?;
    tracing::info!(%table, columns = shape.columns.len(), key = ?shape.key, "created the table from the change events' schema");
    Ok(())
}

fn column_def(c: &ColumnDef) -> String {
    format!("{} {}", quote_ident(&c.name), c.pg_type)
}

/// ` DEFAULT '<text>'::<type>`: the source's default, as a literal.
fn default_clause(c: &ColumnDef) -> String {
    match &c.default {
        Some(d) => format!(" DEFAULT '{}'::{}", d.replace('\'', "''"), c.pg_type),
        None => String::new(),
    }
}

/// The `ALTER TABLE` clauses (and a short name of each change) that make
/// the existing table fit the shape, or the change that cannot be made.
fn plan_changes(
    shape: &TableShape,
    canonical: &[String],
    existing: &[Existing],
    known: &[String],
    source: &Source<'_>,
) -> Result<Vec<(String, String)>, String> {
    let mut plan = Plan {
        evolve: source.evolve == Evolve::AddColumns,
        steps: Vec::new(),
    };
    let position = quote_ident(source.position_column);
    if !existing.iter().any(|e| e.name == source.position_column) {
        plan.change(
            format!("has no position column {position}"),
            format!("ADD COLUMN {position} numeric"),
            format!("ADD {}", source.position_column),
        )?;
    }
    for (c, want) in shape.columns.iter().zip(canonical) {
        let found = existing.iter().find(|e| e.name == c.name);
        column_changes(&mut plan, shape, c, want, found)?;
    }
    // Columns the source dropped: rows written from now on hold NULL there.
    for e in existing.iter().filter(|e| e.not_null) {
        if known.contains(&e.name) && !shape.columns.iter().any(|c| c.name == e.name) {
            let q = quote_ident(&e.name);
            plan.change(
                format!("column {q} was dropped at the source and is NOT NULL here"),
                format!("ALTER COLUMN {q} DROP NOT NULL"),
                format!("NULL {}", e.name),
            )?;
        }
    }
    Ok(plan.steps)
}

/// The changes planned so far, and whether the route may make them.
struct Plan {
    evolve: bool,
    steps: Vec<(String, String)>,
}

impl Plan {
    /// A change the table needs (`why` it does): planned, with `evolve`.
    fn change(&mut self, why: String, sql: String, name: String) -> Result<(), String> {
        if !self.evolve {
            return Err(format!(
                "{why}; set evolve = \"add_columns\" to follow the source, or change the table"
            ));
        }
        self.steps.push((sql, name));
        Ok(())
    }
}

/// What one source column (`want` is its canonical type) needs of the
/// table's column `found`.
fn column_changes(
    plan: &mut Plan,
    shape: &TableShape,
    c: &ColumnDef,
    want: &str,
    found: Option<&Existing>,
) -> Result<(), String> {
    let q = quote_ident(&c.name);
    let Some(e) = found else {
        return plan.change(
            format!("lacks column {q} ({want}) of the source"),
            format!("ADD COLUMN {}{}", column_def(c), default_clause(c)),
            format!("ADD {}", c.name),
        );
    };
    if e.sql_type != want {
        if !widens(&e.sql_type, want) {
            return Err(format!(
                "column {q} is {}; the source's is now {want}, which the table cannot take \
                 without losing data (tables are only widened)",
                e.sql_type
            ));
        }
        plan.change(
            format!("column {q} is {}, the source's is now {want}", e.sql_type),
            format!("ALTER COLUMN {q} TYPE {}", c.pg_type),
            format!("TYPE {}", c.name),
        )?;
    }
    if e.not_null && c.nullable && !shape.key.contains(&c.name) {
        plan.change(
            format!("column {q} is NOT NULL, the source's is nullable"),
            format!("ALTER COLUMN {q} DROP NOT NULL"),
            format!("NULL {}", c.name),
        )?;
    }
    Ok(())
}

/// The table's primary key must be the source's.
async fn check_key(
    conn: &mut PgConnection,
    table: &TableName,
    shape: &TableShape,
) -> Result<Result<(), String>, sqlx::Error> {
    let key: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) k \
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k) \
         FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
    )
    .bind(table.quoted())
    .fetch_optional(&mut *conn)
    .await?;
    let mut have = key.unwrap_or_default();
    let mut want = shape.key.clone();
    have.sort();
    want.sort();
    Ok(if have == want {
        Ok(())
    } else {
        Err(format!(
            "its primary key is ({}), the source's is ({}): a key change cannot be followed; \
             the table's partitions stop until the table is changed by hand",
            have.join(", "),
            want.join(", ")
        ))
    })
}

/// Whether a column of type `from` takes every value of `to` unchanged
/// (both as `format_type` prints them).
pub(crate) fn widens(from: &str, to: &str) -> bool {
    let ints = ["smallint", "integer", "bigint"];
    let rank = |t: &str| ints.iter().position(|i| *i == t);
    if let (Some(a), Some(b)) = (rank(from), rank(to)) {
        return b > a;
    }
    if rank(from).is_some() && to == "numeric" {
        return true;
    }
    if from == "real" && to == "double precision" {
        return true;
    }
    let (fb, fa) = split_mod(from);
    let (tb, ta) = split_mod(to);
    if fb != tb {
        return fb == "character varying" && tb == "text";
    }
    match (fa.as_slice(), ta.as_slice()) {
        // Dropping the modifier removes the limit.
        (_, []) => !fa.is_empty(),
        ([a], [b]) => b >= a,
        // numeric(p,s) → numeric(p2,s): more integer digits, same scale.
        ([p, s], [p2, s2]) => s2 == s && p2 - s2 >= p - s,
        _ => false,
    }
}

/// `character varying(20)` → ("character varying", [20]); the modifier of
/// `time(3) without time zone` is found inside the name.
fn split_mod(t: &str) -> (String, Vec<i64>) {
    let Some(open) = t.find('(') else {
        return (t.to_string(), Vec::new());
    };
    let Some(close) = t[open..].find(')').map(|c| open + c) else {
        return (t.to_string(), Vec::new());
    };
    let args = t[open + 1..close]
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    (format!("{}{}", &t[..open], &t[close + 1..]), args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(cols: &[&str]) -> TableShape {
        TableShape {
            columns: cols
                .iter()
                .map(|c| ColumnDef {
                    name: c.to_string(),
                    pg_type: "text".into(),
                    nullable: true,
                    default: None,
                })
                .collect(),
            key: vec!["id".into()],
        }
    }

    #[test]
    fn a_version_writes_its_columns_and_nulls_the_dropped_ones_only() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut versions = Vec::new();
        let all = names(&["id", "a", "b"]);
        // v1 (id, a), v2 adds b, v3 drops a.
        assert_eq!(
            written_columns(&shape(&["id", "a"]), &all, &mut versions),
            names(&["id", "a"])
        );
        assert_eq!(
            written_columns(&shape(&["id", "a", "b"]), &all, &mut versions),
            names(&["id", "a", "b"])
        );
        assert_eq!(
            written_columns(&shape(&["id", "b"]), &all, &mut versions),
            names(&["id", "a", "b"])
        );
        // v1 again (a replay): `b` came later, so v1 events leave it alone.
        assert_eq!(
            written_columns(&shape(&["a", "id"]), &all, &mut versions),
            names(&["id", "a"])
        );
        assert_eq!(versions.len(), 3);
    }

    #[test]
    fn only_widening_type_changes_are_followed() {
        for (from, to) in [
            ("character varying(20)", "character varying(50)"),
            ("character varying(20)", "character varying"),
            ("character varying(20)", "text"),
            ("smallint", "bigint"),
            ("integer", "numeric"),
            ("numeric(10,2)", "numeric(12,2)"),
            ("numeric(10,2)", "numeric"),
            ("time(3) without time zone", "time(6) without time zone"),
            (
                "timestamp(3) without time zone",
                "timestamp without time zone",
            ),
            ("real", "double precision"),
        ] {
            assert!(widens(from, to), "{from} → {to}");
        }
        for (from, to) in [
            ("character varying(50)", "character varying(20)"),
            ("text", "character varying(20)"),
            ("bigint", "integer"),
            ("numeric(12,2)", "numeric(12,3)"),
            ("numeric", "numeric(12,2)"),
            ("integer", "text"),
            ("timestamp without time zone", "timestamp with time zone"),
            ("double precision", "real"),
        ] {
            assert!(!widens(from, to), "{from} → {to}");
        }
    }
}
