//! `verify`'s side of the database: a temporary copy of a route's table that
//! the log range is folded into (with the sink's own statements, see
//! `BatchWriter::apply_unfenced`), and the comparison of that copy with the
//! table, done by Postgres: a full join on the key, row content compared as
//! jsonb, counts, sample keys, and an order-independent checksum per side.
//!
//! Everything runs on one connection inside the caller's REPEATABLE READ
//! transaction, so the table is read as of the same snapshot as the stored
//! positions, and the temporary tables vanish with it.

use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::route::Route;
use crate::types::{quote_ident, RowKey, TableName};

/// Which columns a comparison covers.
#[derive(Clone, Debug)]
pub struct Columns {
    /// Key columns (the join).
    key: Vec<String>,
    /// Every compared column, keys included, in a fixed order.
    compared: Vec<String>,
}

impl Columns {
    /// Document tables: key, event hash, payload, version and (with
    /// `positions`) the source position. Typed tables: the mapped columns
    /// (what the sink writes), position-sourced ones only with `positions`.
    pub fn of(route: &Route, positions: bool) -> Columns {
        match &route.columns {
            None => {
                let mut compared: Vec<String> = ["key", "event_hash", "payload", "version"]
                    .map(String::from)
                    .to_vec();
                if positions {
                    compared.extend(
                        ["kafka_topic", "kafka_partition", "kafka_offset"].map(String::from),
                    );
                }
                Columns {
                    key: vec!["key".into()],
                    compared,
                }
            }
            Some(map) => Columns {
                key: map.key_columns().map(|c| c.name.clone()).collect(),
                compared: map
                    .columns
                    .iter()
                    .filter(|c| positions || !c.source.is_position())
                    .map(|c| c.name.clone())
                    .collect(),
            },
        }
    }

    pub fn names(&self) -> &[String] {
        &self.compared
    }

    fn list(&self, alias: &str) -> String {
        self.compared
            .iter()
            .map(|c| format!("{alias}.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn row(&self, alias: &str) -> String {
        format!("to_jsonb(ROW({}))", self.list(alias))
    }

    /// The key as one text value, for sample keys.
    fn key_text(&self, alias: &str) -> String {
        match self.key.as_slice() {
            [one] => format!("{alias}.{}::text", quote_ident(one)),
            many => format!(
                "jsonb_build_array({})::text",
                many.iter()
                    .map(|c| format!("{alias}.{}", quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The temporary table a route's range is folded into: `LIKE` the table
/// (defaults, constraints, unique indexes — what the statements rely on),
/// gone at the end of the transaction. `seed` copies the table's compared
/// rows first: a range that does not start at the log's beginning is applied
/// on top of what the table holds (see docs/reprocessing.md, "partial").
pub async fn create_expected(
    conn: &mut PgConnection,
    live: &TableName,
    index: usize,
    seed: Option<&Columns>,
) -> Result<TableName, sqlx::Error> {
    let expected = TableName {
        schema: Some("pg_temp".into()),
        name: format!("kpgs_verify_{index}"),
    };
    sqlx::query(&format!(
        "CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING ALL) ON COMMIT DROP",
        quote_ident(&expected.name),
        live.quoted()
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "CREATE TEMPORARY TABLE {} (k text PRIMARY KEY) ON COMMIT DROP",
        quote_ident(&touched_name(index))
    ))
    .execute(&mut *conn)
    .await?;
    if let Some(cols) = seed {
        let names = cols.list("t");
        sqlx::query(&format!(
            "INSERT INTO {} AS e ({}) SELECT {names} FROM {} t",
            expected.quoted(),
            cols.compared
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            live.quoted()
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(expected)
}

fn touched_name(index: usize) -> String {
    format!("kpgs_verify_keys_{index}")
}

/// Records the row keys (fold identities) a chunk wrote, to count the keys
/// a range covers.
pub async fn record_keys(
    conn: &mut PgConnection,
    index: usize,
    keys: &[&RowKey],
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO pg_temp.{} SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        quote_ident(&touched_name(index))
    ))
    .bind(keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A difference found, with the columns that differ (`different` only).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Sample {
    pub key: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

/// The outcome of comparing a table with its expected content.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Comparison {
    pub rows_table: i64,
    pub rows_expected: i64,
    /// Distinct keys the range wrote or deleted.
    pub keys_in_range: i64,
    pub missing: i64,
    pub extra: i64,
    pub different: i64,
    pub samples_missing: Vec<Sample>,
    pub samples_extra: Vec<Sample>,
    pub samples_different: Vec<Sample>,
    pub checksum_table: String,
    pub checksum_expected: String,
}

impl Comparison {
    pub fn equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }
}

/// Compares `live` with `expected` on `cols`.
pub async fn compare(
    conn: &mut PgConnection,
    live: &TableName,
    expected: &TableName,
    index: usize,
    cols: &Columns,
    samples: i64,
) -> Result<Comparison, sqlx::Error> {
    let joined = joined(live, expected, cols);
    let counts = sqlx::query(&format!(
        "SELECT count(*) FILTER (WHERE e_in AND NOT t_in), count(*) FILTER (WHERE t_in AND NOT e_in), \
                count(*) FILTER (WHERE t_in AND e_in AND t_row IS DISTINCT FROM e_row) FROM ({joined}) j"
    ))
    .fetch_one(&mut *conn)
    .await?;
    let (rows_table, checksum_table) = checksum(conn, live, cols).await?;
    let (rows_expected, checksum_expected) = checksum(conn, expected, cols).await?;
    let keys_in_range = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM pg_temp.{}",
        quote_ident(&touched_name(index))
    ))
    .fetch_one(&mut *conn)
    .await?;
    Ok(Comparison {
        rows_table,
        rows_expected,
        keys_in_range,
        missing: counts.get(0),
        extra: counts.get(1),
        different: counts.get(2),
        samples_missing: sample(conn, &joined, "e_in AND NOT t_in", "e_key", samples).await?,
        samples_extra: sample(conn, &joined, "t_in AND NOT e_in", "t_key", samples).await?,
        samples_different: sample(
            conn,
            &joined,
            "t_in AND e_in AND t_row IS DISTINCT FROM e_row",
            "t_key",
            samples,
        )
        .await?,
        checksum_table,
        checksum_expected,
    })
}

/// Both sides joined on the key: presence, key text, row content and, per
/// compared column, whether it differs.
fn joined(live: &TableName, expected: &TableName, cols: &Columns) -> String {
    let on = cols
        .key
        .iter()
        .map(|k| format!("t.{0} = e.{0}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let differing = cols
        .compared
        .iter()
        .map(|c| {
            format!(
                "CASE WHEN to_jsonb(t.{0}) IS DISTINCT FROM to_jsonb(e.{0}) THEN {1} END",
                quote_ident(c),
                sql_text(c)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT t.kpgs_t_in IS NOT NULL AS t_in, e.kpgs_e_in IS NOT NULL AS e_in, {tk} AS t_key, {ek} AS e_key, \
                {tr} AS t_row, {er} AS e_row, array_remove(ARRAY[{differing}]::text[], NULL) AS differing \
         FROM (SELECT true AS kpgs_t_in, * FROM {live}) t FULL JOIN (SELECT true AS kpgs_e_in, * FROM {expected}) e ON {on}",
        tk = cols.key_text("t"),
        ek = cols.key_text("e"),
        tr = cols.row("t"),
        er = cols.row("e"),
        live = live.quoted(),
        expected = expected.quoted(),
    )
}

/// A string as an SQL literal.
fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn sample(
    conn: &mut PgConnection,
    joined: &str,
    filter: &str,
    key: &str,
    limit: i64,
) -> Result<Vec<Sample>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {key}, differing FROM ({joined}) j WHERE {filter} ORDER BY {key} LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Sample {
            key: r.get(0),
            columns: if filter.contains("t_row") {
                r.get(1)
            } else {
                Vec::new()
            },
        })
        .collect())
}

/// Row count and an order-independent checksum of `table`'s compared
/// columns: the sum of each row's 64-bit md5 prefix, so equal content gives
/// equal checksums whatever the physical order, and it can be compared
/// across databases.
pub async fn checksum(
    conn: &mut PgConnection,
    table: &TableName,
    cols: &Columns,
) -> Result<(i64, String), sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT count(*), md5(count(*)::text || ':' || coalesce(sum(('x' || left(md5({}::text), 16))::bit(64)::bigint::numeric), 0)::text) \
         FROM {} t",
        cols.row("t"),
        table.quoted()
    ))
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.get(0), row.get(1)))
}
