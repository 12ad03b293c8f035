//! Versions and source positions as statements bind them. A computed source
//! position can pass 2⁶³ (a MySQL binlog position packs three numbers,
//! `event::position`): those routes keep and bind them as `numeric`, others
//! as `bigint` (`Route::version_sql_type`). Delete and truncate markers are
//! `numeric`: they serve every route.

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::Postgres;

use crate::types::Version;

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// Binds `versions` as the next parameter: `text[]` to be cast to
/// `numeric[]` when `wide`, else `int8[]`.
pub(super) fn bind_all(
    q: PgQuery<'_>,
    wide: bool,
    versions: impl Iterator<Item = Option<Version>>,
) -> PgQuery<'_> {
    if wide {
        q.bind(
            versions
                .map(|v| v.map(|v| v.to_string()))
                .collect::<Vec<_>>(),
        )
    } else {
        q.bind(versions.map(|v| v.map(narrow)).collect::<Vec<_>>())
    }
}

/// Binds one position as text, for a `$n::numeric` parameter.
pub(super) fn bind_one(q: PgQuery<'_>, v: Version) -> PgQuery<'_> {
    q.bind(v.to_string())
}

/// A narrow route's version: `event::identity` refuses the wider ones, and
/// the stores' sentinels are `i64` bounds.
fn narrow(v: Version) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::narrow;

    #[test]
    fn narrow_keeps_bigints_and_clamps_the_rest() {
        assert_eq!(narrow(42), 42);
        assert_eq!(narrow(i64::MIN.into()), i64::MIN);
        assert_eq!(narrow(i128::MAX), i64::MAX);
        assert_eq!(narrow(i128::MIN), i64::MIN);
    }
}
