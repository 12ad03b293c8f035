//! One route replicating a whole Debezium capture into tables it creates
//! from the change events' own schemas.
//!
//! `recorded_capture_…`: change events of a real Debezium Postgres source
//! (docs/cdc-samples/types: 51 column types, a composite key, mixed-case
//! and reserved names, recorded with `column.propagate.source.type=.*`)
//! are produced again into topics named like the capture's; one templated
//! route replicates them. The expectation is computed independently: the
//! recording's own SQL (schema, snapshot, changes) applied to a source
//! database. Every column must have the source's type and every value must
//! print the same, except where Debezium itself dropped information before
//! the sink saw it (listed in `UPSTREAM_LOSSY`, docs/cdc.md).

mod common;

use std::time::Duration;

use common::tables::{assert_same_rows, column_types, primary_key, quote};
use common::*;

const T: Duration = Duration::from_secs(90);

fn sample_path(rel: &str) -> String {
    format!("{}/docs/cdc-samples/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// One recorded Kafka record.
struct Recorded {
    topic: String,
    key: Option<String>,
    value: Option<String>,
}

fn recorded(run: &str) -> Vec<Recorded> {
    let text = std::fs::read_to_string(sample_path(&format!("types/{run}/raw.jsonl"))).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Recorded {
                topic: v["topic"].as_str().unwrap().to_string(),
                key: v["key"].as_str().map(str::to_string),
                value: v["value"].as_str().map(str::to_string),
            }
        })
        .collect()
}

/// Columns whose values Debezium changed before the sink saw them, with
/// the connector defaults: `interval` as microseconds (a month = 30.4375
/// days), `timetz` converted to UTC (the offset lost), `varbit` without
/// its leading zeros.
const UPSTREAM_LOSSY: [&str; 3] = ["iv", "tmtz", "vb"];

/// How to compare a column: (source expression, target expression).
fn compared(col: &str) -> Option<(String, String)> {
    let q = quote(col);
    Some(match col {
        c if UPSTREAM_LOSSY.contains(&c) => return None,
        // hstore arrives as its JSON form (Debezium's default), into jsonb.
        "hs" => ("hstore_to_jsonb(hs)".into(), q),
        // json is stored as the JSON value it holds (duplicate keys and
        // spacing are not kept).
        "js" => ("js::jsonb".into(), "js::jsonb".into()),
        // The XML declaration is not in the change event.
        "x" => (r"regexp_replace(x::text, '^<\?xml[^>]*\?>', '')".into(), q),
        // `decimal.handling.mode=precise` (the default) sends NaN and
        // ±Infinity numerics as NULL.
        "n_plain" | "n_38_10" | "n_12_2" => (
            format!(
                "CASE WHEN {q}::text IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE {q} END"
            ),
            q,
        ),
        _ => (q.clone(), q),
    })
}

/// Source and target types that differ by design: user-defined types the
/// target does not have (an enum → text, a domain → its base type), hstore
/// → jsonb. `(6)` is the default precision of time types: a source column
/// declared `timestamp(6)` and one declared `timestamp` send the same
/// schema, and the target's `timestamp` holds both exactly.
fn expected_type(col: &str, source_type: &str) -> String {
    match col {
        "e" => "text".into(),
        "hs" => "jsonb".into(),
        "dom" => "numeric(10,2)".into(),
        _ => source_type.replace("(6)", ""),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_capture_replicates_into_tables_created_from_its_schemas() {
    let source = TestDb::new().await;
    for file in ["schema.sql", "snapshot.sql", "dml.sql"] {
        let sql = std::fs::read_to_string(sample_path(&format!("types/{file}"))).unwrap();
        sqlx::raw_sql(&sql)
            .execute(&source.pool)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let target = TestDb::new().await;
    let prefix = unique("kpgs_cap");
    let mut topics = Vec::new();
    for r in recorded("2-column-propagate-source-type") {
        let name = r.topic.replacen("kpgsty2", &prefix, 1);
        if !topics.iter().any(|t: &TestTopic| t.name == name) {
            topics.push(TestTopic::named(&name, 1).await);
        }
        let t = topics.iter().find(|t| t.name == name).unwrap();
        t.send(0, r.key.as_deref(), r.value.as_deref().map(str::as_bytes));
    }
    topics.iter().for_each(TestTopic::flush);
    let route = format!(
        "[[route]]\ntopic = \"^{prefix}\\\\..*\"\ntable = \"replica.${{source.table}}\"\n\
         envelope = \"debezium\"\ncreate_table = true\n"
    );
    let cfg = SinkConfig::with_routes(&target, &route, "");
    let mut sink = SinkProcess::start(&cfg);
    for t in &topics {
        wait_caught_up(&target, &cfg.group, t, T).await;
    }
    for (src, dst) in [
        ("public.alltypes", "replica.alltypes"),
        (r#"public."CamelTable""#, r#"replica."CamelTable""#),
        (r#"public."user""#, r#"replica."user""#),
    ] {
        let src_cols = column_types(&source.pool, src).await;
        let dst_cols = column_types(&target.pool, dst).await;
        let (data_cols, position) = dst_cols.split_at(dst_cols.len() - 1);
        assert_eq!(position[0], ("__source_position".into(), "bigint".into()));
        let want: Vec<(String, String)> = src_cols
            .iter()
            .map(|(c, t)| (c.clone(), expected_type(c, t)))
            .collect();
        assert_eq!(
            data_cols,
            want.as_slice(),
            "{dst}: the source's columns and types"
        );
        let key = primary_key(&source.pool, src).await;
        assert_eq!(
            primary_key(&target.pool, dst).await,
            key,
            "{dst}: primary key"
        );
        let exprs: Vec<(String, String, String)> = src_cols
            .iter()
            .filter_map(|(c, _)| compared(c).map(|(s, d)| (s, d, c.clone())))
            .collect();
        assert_same_rows((&source.pool, src), (&target.pool, dst), &key, &exprs).await;
    }
    let text = sink.metrics().await.unwrap_or_default();
    assert_metrics_identity(&text);
    sink.kill9();
}
