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
use kafka_pg_sink::format::registry::{RegistryClient, RegistryConfig};
use kafka_pg_sink::format::SchemaType;

const T: Duration = Duration::from_secs(90);

fn sample_path(rel: &str) -> String {
    format!("{}/docs/cdc-samples/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// A source database in the state the recordings end in: the recorded
/// SQL files, in order.
async fn source_db(files: &[&str]) -> TestDb {
    let source = TestDb::new().await;
    for file in files {
        let sql = std::fs::read_to_string(sample_path(file)).unwrap();
        sqlx::raw_sql(&sql)
            .execute(&source.pool)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    source
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

/// The recorded tables: (source, replica).
const RECORDED_TABLES: [(&str, &str); 3] = [
    ("public.alltypes", "replica.alltypes"),
    (r#"public."CamelTable""#, r#"replica."CamelTable""#),
    (r#"public."user""#, r#"replica."user""#),
];

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
    let source = source_db(&["types/schema.sql", "types/snapshot.sql", "types/dml.sql"]).await;
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
    assert_replicas_equal_sources(&source, &target, &RECORDED_TABLES).await;
    let text = sink.metrics().await.unwrap_or_default();
    assert_metrics_identity(&text);
    sink.kill9();
    // verify folds the topics again, each schema version with its mapping.
    let (ok, out) = cfg.cli(&["verify"], &[]);
    assert!(ok, "{out}");
}

/// The same capture recorded in Avro through a registry (Apicurio's
/// converter, Confluent wire format; docs/cdc-samples/avro): the writer
/// schemas are registered in the test registry again and the frames
/// re-pointed at the ids it gives them.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_avro_capture_replicates_into_tables_created_from_its_schemas() {
    let registry_url = std::env::var("REGISTRY_URL")
        .expect("REGISTRY_URL: the schema registry (scripts/test.sh starts it)");
    let source = source_db(&[
        "types/schema.sql",
        "types/snapshot.sql",
        "types/dml.sql",
        "avro/dml.sql",
    ])
    .await;
    let target = TestDb::new().await;
    let prefix = unique("kpgs_avro");
    // The file shows decoded values too, with Python's bare NaN/Infinity.
    let text = std::fs::read_to_string(sample_path("avro/02-events-propagate-source-type.json"))
        .unwrap()
        .replace(": -Infinity", ": null")
        .replace(": Infinity", ": null")
        .replace(": NaN", ": null");
    let recorded: serde_json::Value = serde_json::from_str(&text).unwrap();
    let registry = RegistryClient::new(&RegistryConfig::new(registry_url.clone())).unwrap();
    let mut ids = std::collections::HashMap::new();
    let mut topics: Vec<TestTopic> = Vec::new();
    for e in recorded["events"].as_array().unwrap() {
        let topic = e["topic"].as_str().unwrap().replacen("kpgsavp", &prefix, 1);
        if !topics.iter().any(|t| t.name == topic) {
            topics.push(TestTopic::named(&topic, 1).await);
        }
        let frame = |hex_field: &str, id_field: &str, suffix: &str| {
            let bytes = hex::decode(e[hex_field].as_str()?).unwrap();
            let old = e[id_field].as_u64().unwrap();
            Some((bytes, old, format!("{topic}-{suffix}")))
        };
        let key = frame("key_hex", "key_schema_id", "key");
        let value = frame("value_hex", "value_schema_id", "value");
        let mut framed = Vec::new();
        for part in [key, value] {
            let Some((mut bytes, old, subject)) = part else {
                framed.push(None);
                continue;
            };
            let id = match ids.entry((old, subject)) {
                std::collections::hash_map::Entry::Occupied(e) => *e.get(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let schema: serde_json::Value = serde_json::from_str(
                        &std::fs::read_to_string(sample_path(&format!(
                            "avro/schemas/id-{old}.json"
                        )))
                        .unwrap(),
                    )
                    .unwrap();
                    let text = schema["ccompat_response"]["schema"].as_str().unwrap();
                    let id = registry
                        .register(&e.key().1, SchemaType::Avro, text)
                        .await
                        .unwrap();
                    *e.insert(id)
                }
            };
            bytes[1..5].copy_from_slice(&id.to_be_bytes());
            framed.push(Some(bytes));
        }
        let t = topics.iter().find(|t| t.name == topic).unwrap();
        t.send_bytes(0, framed[0].as_deref(), framed[1].as_deref());
    }
    topics.iter().for_each(TestTopic::flush);
    let route = format!(
        "[[route]]\ntopic = \"^{prefix}\\\\..*\"\ntable = \"replica.${{source.table}}\"\n\
         envelope = \"debezium\"\ncreate_table = true\nformat = \"avro\"\nkey_format = \"avro\"\n"
    );
    let cfg = SinkConfig::with_routes(
        &target,
        &route,
        &format!("[schema_registry]\nurl = \"{registry_url}\"\n"),
    );
    let mut sink = SinkProcess::start(&cfg);
    for t in &topics {
        wait_caught_up(&target, &cfg.group, t, T).await;
    }
    // This recording holds the one table.
    assert_replicas_equal_sources(&source, &target, &RECORDED_TABLES[..1]).await;
    let text = sink.metrics().await.unwrap_or_default();
    assert_metrics_identity(&text);
    assert_eq!(
        metric(&text, "kafka_pg_sink_dead_letters_total"),
        0.0,
        "{text}"
    );
    sink.kill9();
}

/// Every recorded table has the source's columns, types (but for
/// [`expected_type`]), primary key and rows (but for [`UPSTREAM_LOSSY`]).
async fn assert_replicas_equal_sources(source: &TestDb, target: &TestDb, tables: &[(&str, &str)]) {
    for &(src, dst) in tables {
        let src_cols = column_types(&source.pool, src).await;
        let dst_cols = column_types(&target.pool, dst).await;
        let (data_cols, position) = dst_cols.split_at(dst_cols.len() - 1);
        assert_eq!(position[0], ("__source_position".into(), "numeric".into()));
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
}
