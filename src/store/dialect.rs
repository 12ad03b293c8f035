//! The database the sink writes to: PostgreSQL, or the coordinator of a
//! Citus cluster, detected at startup. On Citus the offsets and the sink's
//! other tables stay coordinator tables while route tables are distributed;
//! a transaction that writes both commits with two-phase commit decided by
//! the coordinator's own commit, so exactly once holds. A few statements
//! need another shape there (`documents`, `typed`): correlated subqueries
//! over distributed tables, and a read after a data-modifying CTE in the
//! same statement (Citus runs the CTE first), are not what they are on one
//! server. docs/scaling.md.

use sqlx::{PgConnection, PgPool};

use crate::types::TableName;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    #[default]
    Postgres,
    Citus,
}

impl Dialect {
    /// Citus when its extension is installed in the sink's database.
    pub async fn detect(pool: &PgPool) -> Result<Dialect, sqlx::Error> {
        let citus: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")
                .fetch_one(pool)
                .await?;
        Ok(if citus {
            Dialect::Citus
        } else {
            Dialect::Postgres
        })
    }

    pub fn is_citus(self) -> bool {
        self == Dialect::Citus
    }

    /// Settings every commit transaction starts with. On Citus, deadlock
    /// prevention takes a lock on every shard a multi-shard write touches
    /// until commit, which serialises the commit lanes of one table even
    /// with disjoint keys; without it, the rare deadlock across workers is
    /// detected within a second and retried (40P01).
    pub fn begin_settings(self) -> &'static str {
        match self {
            Dialect::Postgres => "",
            Dialect::Citus => "SET LOCAL citus.enable_deadlock_prevention = off;",
        }
    }
}

/// Whether the connection's database has Citus (its metadata tables).
async fn is_citus(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
}

/// The column a Citus distributed (hash) table is sharded by; `None` for a
/// plain table, or on PostgreSQL.
pub async fn distribution_column(
    conn: &mut PgConnection,
    table: &TableName,
) -> Result<Option<String>, sqlx::Error> {
    if !is_citus(conn).await? {
        return Ok(None);
    }
    sqlx::query_scalar(
        "SELECT column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition \
         WHERE logicalrelid = to_regclass($1) AND partmethod = 'h'",
    )
    .bind(table.quoted())
    .fetch_optional(&mut *conn)
    .await
}

/// On Citus, shards `table` on `column` unless it is distributed already,
/// in its own colocation group (`colocate_with` none: a text key's
/// collation decides which tables may share one) or beside `with` (a
/// shadow beside its live table). A no-op on PostgreSQL.
pub async fn distribute(
    conn: &mut PgConnection,
    table: &TableName,
    column: &str,
    with: Option<&TableName>,
) -> Result<(), sqlx::Error> {
    if !is_citus(conn).await? || distribution_column(conn, table).await?.is_some() {
        return Ok(());
    }
    sqlx::query("SELECT create_distributed_table($1::regclass, $2, colocate_with => $3)")
        .bind(table.quoted())
        .bind(column)
        .bind(with.map_or("none".to_string(), TableName::quoted))
        .execute(&mut *conn)
        .await?;
    tracing::info!(%table, column, "distributed the table over the Citus workers");
    Ok(())
}

/// The problem with a route whose table Citus shards on a column outside
/// the route's key: the unique key `ON CONFLICT` needs cannot exist there.
pub async fn check_distribution(
    conn: &mut PgConnection,
    table: &TableName,
    key: &[&str],
) -> Result<Option<String>, sqlx::Error> {
    Ok(match distribution_column(conn, table).await? {
        Some(c) if !key.contains(&c.as_str()) => Some(format!(
            "table {table} is distributed on `{c}`, which is not in the route's key ({}): Citus \
             keeps a unique key only when it holds the distribution column. Distribute the \
             table on a key column (SELECT undistribute_table('{table}'); SELECT \
             create_distributed_table('{table}', '{}')), or key the route by `{c}` too",
            key.join(", "),
            key.first().copied().unwrap_or("key")
        )),
        _ => None,
    })
}
