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

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use common::capture::whole_database_route;
use common::connect_protobuf::Transcoded;
use common::role::{run_expecting_exit, Role};
use common::tables::{assert_same_rows, column_types, primary_key, quote};
use common::*;
use kafka_pg_sink::format::registry::{RegistryClient, RegistryConfig};
use kafka_pg_sink::format::{wire, SchemaType};

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

/// Run as a role with data rights only (docs/operations.md): creating
/// tables from change events needs `CREATE` where they go, and a role
/// without it stops at startup naming the right.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_capture_replicates_into_tables_created_from_its_schemas() {
    replicate_recorded_capture(TestDb::new().await, Runner::LimitedRole).await;
}

/// The same into a Citus cluster (coordinator + two workers): every table
/// is created distributed on its first key column, the change events
/// (updates, deletes, a primary-key change) apply through the Citus
/// statement variants, and `verify` reads one consistent state.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_capture_replicates_into_citus_distributed_tables() {
    let target = TestDb::citus().await;
    let target = replicate_recorded_capture(target, Runner::Owner).await;
    for (_, dst) in RECORDED_TABLES {
        let column: Option<String> = sqlx::query_scalar(
            "SELECT column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition \
             WHERE logicalrelid = $1::regclass",
        )
        .bind(dst)
        .fetch_optional(&target.pool)
        .await
        .unwrap();
        let key = primary_key(&target.pool, dst).await;
        assert_eq!(
            column.as_ref(),
            key.first(),
            "{dst} is distributed on its first key column"
        );
    }
    let local: i64 = target
        .count(
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'sink_offsets'::regclass",
        )
        .await;
    assert_eq!(local, 0, "the sink's own tables stay coordinator tables");
}

/// Who runs the sink.
enum Runner {
    Owner,
    /// `setup` as the owner, then `run` and `verify` as a role with the
    /// documented data rights plus `CREATE` on the database (the route's
    /// schema does not exist yet).
    LimitedRole,
}

/// Replicates the recorded capture into `target` and checks it against
/// the source, the metrics and `verify`.
async fn replicate_recorded_capture(target: TestDb, runner: Runner) -> TestDb {
    let source = source_db(&["types/schema.sql", "types/snapshot.sql", "types/dml.sql"]).await;
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
    let route = whole_database_route(&prefix, "");
    let cfg = SinkConfig::with_routes(&target, &route, "");
    let _role = match runner {
        Runner::Owner => None,
        Runner::LimitedRole => Some(limit_to_data_rights(&target, &cfg).await),
    };
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
    target
}

/// Sets the database up as its owner, then points `cfg` at a role with
/// data rights only: its first start is refused naming the missing CREATE,
/// and CREATE on the database (the schema is created at first sight) lets
/// it run.
async fn limit_to_data_rights(target: &TestDb, cfg: &SinkConfig) -> Role {
    let role = Role::after_setup(target, cfg, cfg).await;
    let out = run_expecting_exit(cfg);
    assert!(
        out.contains(r#"CREATE on schema "replica""#)
            && out.contains(&format!(
                r#"GRANT USAGE, CREATE ON SCHEMA "replica" TO "{}""#,
                role.name
            )),
        "{out}"
    );
    let db_name = target
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    target
        .exec(&format!(
            "GRANT CREATE ON DATABASE \"{db_name}\" TO {}",
            role.name
        ))
        .await;
    role
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
    let (_cfg, mut sink) = replicate_from_registry(&target, &prefix, "avro", &topics).await;
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

/// The same capture as Confluent's ProtobufConverter writes it with
/// `optional.for.nullables=true` (tests/common/connect_protobuf.rs
/// transcodes the recorded JsonConverter records by its rules; no Protobuf
/// converter for Connect is served here). Every column gets the type the
/// converter's schema still says ([`protobuf_column_type`]): where that is
/// the source's type the values must equal the source's, elsewhere (names
/// the converter dropped: `MicroTimestamp` → `bigint`, …) NULL stays NULL.
/// Events the converter cannot write (a NULL array element, a timestamp
/// outside years 1–9999) are left out, and their rows with them.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_capture_in_protobuf_replicates_into_tables_created_from_its_schemas() {
    replicate_protobuf_capture("1-defaults", "kpgsty1").await;
}

/// The same with `time.precision.mode=connect`, `decimal.handling.mode=string`
/// and hstore as a map: Connect's dates, times and timestamps survive the
/// converter as `google.type.Date`, `TimeOfDay` and `Timestamp`.
#[tokio::test(flavor = "multi_thread")]
async fn protobuf_capture_in_connect_time_modes_keeps_dates_and_times() {
    replicate_protobuf_capture("3-string-connect-modes", "kpgsty3").await;
}

/// What [`produce_as_protobuf`] produced.
struct Produced {
    topics: Vec<TestTopic>,
    /// The last value schema (JsonConverter JSON) per topic.
    last_schema: HashMap<String, serde_json::Value>,
    /// Records the converter could not write: topic, key payload, why.
    left_out: Vec<(String, serde_json::Value, String)>,
}

async fn replicate_protobuf_capture(run: &str, recorded_prefix: &str) {
    let registry_url = std::env::var("REGISTRY_URL")
        .expect("REGISTRY_URL: the schema registry (scripts/test.sh starts it)");
    let registry = RegistryClient::new(&RegistryConfig::new(registry_url.clone())).unwrap();
    let source = source_db(&["types/schema.sql", "types/snapshot.sql", "types/dml.sql"]).await;
    let target = TestDb::new().await;
    let prefix = unique("kpgs_pb");
    let produced = produce_as_protobuf(run, recorded_prefix, &prefix, &registry).await;
    assert!(
        produced
            .left_out
            .iter()
            .all(|(t, _, why)| t.ends_with(".public.alltypes")
                && (why.contains("NULL array element") || why.contains("outside google.protobuf"))),
        "only rows the converter cannot write are left out: {:?}",
        produced.left_out
    );
    let (_cfg, mut sink) =
        replicate_from_registry(&target, &prefix, "protobuf", &produced.topics).await;
    let text = sink.metrics().await.unwrap_or_default();
    assert_eq!(
        metric(&text, "kafka_pg_sink_dead_letters_total"),
        0.0,
        "{text}"
    );
    sink.kill9();
    for (src, dst) in RECORDED_TABLES {
        let topic = format!("{prefix}.{}", src.replace('"', ""));
        assert_protobuf_replica(&source, (&target, dst), src, &topic, &produced).await;
    }
}

/// Produces the run's records as Protobuf under topics renamed from
/// `recorded_prefix` to `prefix`, each schema registered under the
/// topic's subject.
async fn produce_as_protobuf(
    run: &str,
    recorded_prefix: &str,
    prefix: &str,
    registry: &RegistryClient,
) -> Produced {
    let mut produced = Produced {
        topics: Vec::new(),
        last_schema: HashMap::new(),
        left_out: Vec::new(),
    };
    let mut ids: HashMap<(String, String), u32> = HashMap::new();
    for r in recorded(run) {
        let topic = r.topic.replacen(recorded_prefix, prefix, 1);
        if !produced.topics.iter().any(|t| t.name == topic) {
            produced.topics.push(TestTopic::named(&topic, 1).await);
        }
        let mut framed = Vec::new();
        for (part, record) in [("key", &r.key), ("value", &r.value)] {
            let Some(text) = record else {
                framed.push(None);
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let transcoded = Transcoded::new(&v["schema"]);
            let subject = format!("{topic}-{part}");
            let id = match ids.entry((subject.clone(), transcoded.text.clone())) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => *e.insert(
                    registry
                        .register(&subject, SchemaType::Protobuf, &transcoded.text)
                        .await
                        .unwrap_or_else(|e| panic!("{e}\n{}", transcoded.text)),
                ),
            };
            if part == "value" {
                produced
                    .last_schema
                    .insert(topic.clone(), v["schema"].clone());
            }
            framed.push(Some(
                transcoded
                    .encode(&v["schema"], &v["payload"])
                    .map(|body| wire::encode_protobuf(id, &[0], &body)),
            ));
        }
        match (&framed[0], &framed[1]) {
            (_, Some(Err(why))) | (Some(Err(why)), _) => {
                let key: serde_json::Value =
                    serde_json::from_str(r.key.as_deref().unwrap()).unwrap();
                produced
                    .left_out
                    .push((topic.clone(), key["payload"].clone(), why.clone()));
            }
            (k, v) => {
                let t = produced.topics.iter().find(|t| t.name == topic).unwrap();
                let ok =
                    |x: &Option<Result<Vec<u8>, String>>| x.as_ref().map(|r| r.clone().unwrap());
                t.send_bytes(0, ok(k).as_deref(), ok(v).as_deref());
            }
        }
    }
    produced.topics.iter().for_each(TestTopic::flush);
    produced
}

/// The replica of `src` has the columns the Protobuf schema gives, the
/// source's key, and the source's rows (but for those left out).
async fn assert_protobuf_replica(
    source: &TestDb,
    (target, dst): (&TestDb, &str),
    src: &str,
    topic: &str,
    produced: &Produced,
) {
    let row = produced.last_schema[topic]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "after")
        .unwrap();
    let want: Vec<(String, String)> = row["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["field"].as_str().unwrap().to_string(),
                protobuf_column_type(f),
            )
        })
        .collect();
    let dst_cols = column_types(&target.pool, dst).await;
    assert_eq!(
        &dst_cols[..dst_cols.len() - 1],
        want.as_slice(),
        "{dst}: columns"
    );
    let key = primary_key(&source.pool, src).await;
    assert_eq!(
        primary_key(&target.pool, dst).await,
        key,
        "{dst}: primary key"
    );
    for (_, k, _) in produced.left_out.iter().filter(|(t, _, _)| t == topic) {
        for (db, table) in [(source, src), (target, dst)] {
            let cond: Vec<String> = key
                .iter()
                .map(|c| format!("{}::text = '{}'", quote(c), text_of(&k[c])))
                .collect();
            db.exec(&format!("DELETE FROM {table} WHERE {}", cond.join(" AND ")))
                .await;
        }
    }
    let src_cols = column_types(&source.pool, src).await;
    let exprs: Vec<(String, String, String)> = src_cols
        .iter()
        .zip(&want)
        .filter_map(|((c, src_type), (_, pb_type))| compared_as_protobuf(c, src_type, pb_type))
        .collect();
    assert_same_rows((&source.pool, src), (&target.pool, dst), &key, &exprs).await;
    let rows = target.count(&format!("SELECT count(*) FROM {dst}")).await;
    assert!(rows > 0, "{dst}: rows left to compare");
}

/// How to compare a column of a Protobuf replica: by value where it has
/// the source's type, by NULL-ness elsewhere. The converter writes a NULL
/// array as an empty one.
fn compared_as_protobuf(
    c: &str,
    src_type: &str,
    pb_type: &str,
) -> Option<(String, String, String)> {
    let array = pb_type.ends_with("[]");
    if pb_type == expected_type(c, src_type) {
        let (s, d) = compared(c)?;
        let s = if array {
            format!("coalesce({s}, '{{}}')")
        } else {
            s
        };
        return Some((s, d, c.to_string()));
    }
    let empty = if array {
        format!("(coalesce(cardinality({}), 0) = 0)", quote(c))
    } else {
        format!("({} IS NULL)", quote(c))
    };
    Some((empty.clone(), empty, c.to_string()))
}

/// A key value as the text Postgres prints for it.
fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.replace('\'', "''"),
        other => other.to_string(),
    }
}

/// The column type a Connect field's schema leaves after Confluent's
/// ProtobufConverter: Connect's own logical types, the two Debezium
/// structs the sink recognises by message name, and otherwise the carrier.
fn protobuf_column_type(f: &serde_json::Value) -> String {
    let p = &f["parameters"];
    match f["name"].as_str().unwrap_or("") {
        "org.apache.kafka.connect.data.Decimal" => {
            return match (p["connect.decimal.precision"].as_str(), p["scale"].as_str()) {
                (Some(pr), Some(sc)) => format!("numeric({pr},{sc})"),
                _ => "numeric".into(),
            }
        }
        "io.debezium.data.VariableScaleDecimal" => return "numeric".into(),
        "io.debezium.data.geometry.Point" => return "point".into(),
        "org.apache.kafka.connect.data.Date" => return "date".into(),
        "org.apache.kafka.connect.data.Time" => return "time(3) without time zone".into(),
        "org.apache.kafka.connect.data.Timestamp" => {
            return "timestamp(3) without time zone".into()
        }
        _ => {}
    }
    match f["type"].as_str().unwrap() {
        "array" => format!("{}[]", protobuf_column_type(&f["items"])),
        "int8" | "int16" => "smallint".into(),
        "int32" => "integer".into(),
        "int64" => "bigint".into(),
        "float" => "real".into(),
        "double" => "double precision".into(),
        "boolean" => "boolean".into(),
        "string" => "text".into(),
        "bytes" => "bytea".into(),
        "struct" | "map" => "jsonb".into(),
        other => panic!("Connect type {other}"),
    }
}

/// The whole-database route over `prefix`'s topics with keys and values in
/// a registry `format`, started and caught up with `topics`. The
/// configuration holds the sink's log: keep it while the sink runs.
async fn replicate_from_registry(
    target: &TestDb,
    prefix: &str,
    format: &str,
    topics: &[TestTopic],
) -> (SinkConfig, SinkProcess) {
    let registry_url = std::env::var("REGISTRY_URL").expect("REGISTRY_URL");
    let route = whole_database_route(
        prefix,
        &format!("format = \"{format}\"\nkey_format = \"{format}\"\n"),
    );
    let cfg = SinkConfig::with_routes(
        target,
        &route,
        &format!("[schema_registry]\nurl = \"{registry_url}\"\n"),
    );
    let sink = SinkProcess::start(&cfg);
    for t in topics {
        wait_caught_up(target, &cfg.group, t, T).await;
    }
    (cfg, sink)
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

/// Records of a recorded MySQL-family capture (tests/cdc-samples/mysql:
/// MariaDB 10.11 through the Debezium MySQL connector), produced again
/// under topics renamed from `prefix` to `to`.
async fn produce_mysql_recording(files: &[&str], prefix: &str, to: &str) -> Vec<TestTopic> {
    let mut topics: Vec<TestTopic> = Vec::new();
    for file in files {
        let path = format!(
            "{}/tests/cdc-samples/mysql/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for e in doc["events"].as_array().unwrap() {
            let name = e["topic"].as_str().unwrap().replacen(prefix, to, 1);
            if !topics.iter().any(|t| t.name == name) {
                topics.push(TestTopic::named(&name, 1).await);
            }
            let text = |v: &serde_json::Value| (!v.is_null()).then(|| v.to_string());
            let key = text(&e["key"]);
            // Where Jackson wrote a number differently, the record as sent.
            let value = e["value_raw"]
                .as_str()
                .map(str::to_string)
                .or_else(|| text(&e["value"]));
            let t = topics.iter().find(|t| t.name == name).unwrap();
            t.send(0, key.as_deref(), value.as_deref().map(str::as_bytes));
        }
    }
    topics.iter().for_each(TestTopic::flush);
    topics
}

/// MySQL types (`column.propagate.source.type=.*`,
/// `bigint.unsigned.handling.mode=precise`): the column each needs and the
/// value the recording's SQL wrote, per row — written from that SQL, not
/// from the events (tests/cdc-samples/mysql/schemas-on/09-types-…).
#[tokio::test(flavor = "multi_thread")]
async fn recorded_mysql_capture_keeps_mysql_types() {
    let target = TestDb::new().await;
    let prefix = unique("kpgs_my");
    let files = [
        "schemas-on/01-snapshot-propagate-precise.json",
        "schemas-on/09-types-propagate-precise.json",
    ];
    let topics = produce_mysql_recording(&files, "mdbprecon", &prefix).await;
    let route = whole_database_route(&prefix, "");
    let cfg = SinkConfig::with_routes(&target, &route, "");
    let _sink = SinkProcess::start(&cfg);
    for t in &topics {
        wait_caught_up(&target, &cfg.group, t, T).await;
    }
    let types: std::collections::BTreeMap<String, String> =
        column_types(&target.pool, "replica.alltypes")
            .await
            .into_iter()
            .collect();
    let want_types = [
        ("u64", "numeric(20,0)"),
        ("i64", "bigint"),
        ("flag", "smallint"),
        ("i8", "smallint"),
        ("dt0", "timestamp(0) without time zone"),
        ("dt3", "timestamp(3) without time zone"),
        ("dt6", "timestamp(6) without time zone"),
        ("ts0", "timestamp(0) with time zone"),
        ("ts6", "timestamp(6) with time zone"),
        ("yr", "integer"),
        ("en", "text"),
        ("st", "text"),
        ("b1", "bit(1)"),
        ("b12", "bit(12)"),
        ("dec1", "numeric(12,4)"),
        ("dec2", "numeric(30,0)"),
        ("d", "date"),
        ("t0", "interval(0)"),
        ("t6", "interval(6)"),
        ("vc", "character varying(20)"),
        ("tx", "text"),
        ("bl", "bytea"),
        ("dbl", "double precision"),
        ("fl", "real"),
        ("__source_position", "numeric"),
    ];
    for (c, t) in want_types {
        assert_eq!(types.get(c).map(String::as_str), Some(t), "column {c}");
    }
    let mut conn = target.pool.acquire().await.unwrap();
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let cols = "u64, i64, flag, i8, dt0, dt3, dt6, ts0, ts3, ts6, yr, en, st, js, b1, b12, \
                dec1, dec2, d, t0, t6, vc, tx, bl, dbl, fl";
    let row = |id: i32| {
        format!(
            "SELECT concat_ws(' | ', {}) FROM replica.alltypes WHERE id = {id}",
            cols.split(", ")
                .map(|c| format!("coalesce({c}::text, 'NULL')"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut got = Vec::new();
    for id in [2, 4, 5, 1, 3, 9] {
        let r: String = sqlx::query_scalar(&row(id))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        got.push(r);
    }
    let streamed_2 = "18446744073709551615 | -9223372036854775808 | 1 | -128 | \
        2024-02-29 13:14:15 | 2024-02-29 13:14:15.123 | 2024-02-29 13:14:15.123456 | \
        2024-02-29 13:14:15+00 | 2024-02-29 13:14:15.123+00 | 2024-02-29 13:14:15.123456+00 | \
        2024 | medium | a,c | {\"k\": [1, 2.5, \"x\"], \"n\": null, \"s\": \"é\"} | 1 | 101010101010 | \
        12345678.9012 | 123456789012345678901234567890 | 2024-02-29 | -838:59:59 | 12:34:56.789012 | \
        héllo ✓ | a text | \\x00ff10 | 1.5e+300 | 3.25";
    // Zero dates arrive as null (the connector's choice); YEAR 0000
    // arrives as 1900 streamed and 2000 in the snapshot; MariaDB stored
    // the DOUBLE -0.0 as 0 (the event says 0.0).
    let streamed_4 = "9223372036854775808 | 9223372036854775807 | 0 | 127 | \
        NULL | NULL | NULL | NULL | NULL | NULL | 1900 | small |  | [] | 0 | 000000000001 | \
        -0.0001 | -1 | NULL | 00:00:00 | -00:00:00.000001 |  |  | \\x | 0 | -1.17549e-38";
    let streamed_5 = vec!["NULL"; 26].join(" | ");
    assert_eq!(got[0], streamed_2, "row 2");
    assert_eq!(got[1], streamed_4, "row 4");
    assert_eq!(got[2], streamed_5, "row 5");
    // The snapshot's rows hold the same values as the streamed ones.
    assert_eq!(got[3], got[0], "snapshot row 1 = row 2");
    assert_eq!(
        got[4],
        got[1].replace("| 1900 |", "| 2000 |"),
        "snapshot row 3 = row 4"
    );
    assert_eq!(got[5], got[2], "snapshot row 9 = row 5");
}
