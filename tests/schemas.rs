//! Schema'd topics end to end, per format (Avro, Protobuf, JSON Schema), with
//! a real schema registry (Apicurio via scripts/registry.sh, Confluent API)
//! and the real broker: the table is created from the value schema (v1), the
//! sink is SIGKILLed mid-stream, v2 adds an optional field and the table
//! evolves, events re-encoded under v2 (field left null) are duplicates,
//! poison messages (no magic byte, unknown schema id, a body that does not
//! decode) become dead letters naming the reason, the rest flows — and the
//! table equals a model computed from what was produced.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value as A;
use common::*;
use kafka_pg_sink::format::registry::{RegistryClient, RegistryConfig};
use kafka_pg_sink::format::{wire, Format, Schema, SchemaType};
use prost::Message as _;
use prost_reflect::{DynamicMessage, Value as P};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const T: Duration = Duration::from_secs(90);

fn registry_url() -> String {
    std::env::var("REGISTRY_URL").expect(
        "REGISTRY_URL: the schema registry (scripts/test.sh starts it: scripts/registry.sh ensure)",
    )
}

/// One order as the model sees it.
#[derive(Clone, Debug, PartialEq)]
struct Order {
    id: i64,
    customer: String,
    amount: f64,
    note: Option<String>,
}

/// A format's two schema versions and how to encode an order with each.
struct Codec {
    format: Format,
    schema_type: SchemaType,
    v1: &'static str,
    v2: &'static str,
}

const AVRO: Codec = Codec {
    format: Format::Avro,
    schema_type: SchemaType::Avro,
    v1: r#"{"type":"record","name":"Order","namespace":"kpgs","fields":[
        {"name":"id","type":"long"},{"name":"customer","type":"string"},{"name":"amount","type":"double"}]}"#,
    v2: r#"{"type":"record","name":"Order","namespace":"kpgs","fields":[
        {"name":"id","type":"long"},{"name":"customer","type":"string"},{"name":"amount","type":"double"},
        {"name":"note","type":["null","string"],"default":null}]}"#,
};

const PROTOBUF: Codec = Codec {
    format: Format::Protobuf,
    schema_type: SchemaType::Protobuf,
    v1: "syntax = \"proto3\";\npackage kpgs;\nmessage Order { int64 id = 1; string customer = 2; double amount = 3; }\n",
    v2: "syntax = \"proto3\";\npackage kpgs;\nmessage Order { int64 id = 1; string customer = 2; double amount = 3; optional string note = 4; }\n",
};

const JSON_SCHEMA: Codec = Codec {
    format: Format::JsonSchema,
    schema_type: SchemaType::Json,
    v1: r#"{"type":"object","properties":{"id":{"type":"integer"},"customer":{"type":"string"},
        "amount":{"type":"number"}},"required":["id","customer","amount"]}"#,
    v2: r#"{"type":"object","properties":{"id":{"type":"integer"},"customer":{"type":"string"},
        "amount":{"type":"number"},"note":{"type":["string","null"]}},"required":["id","customer","amount"]}"#,
};

impl Codec {
    /// The order in the wire format of `schema` (v2 writes `note`, v1 cannot).
    fn encode(&self, schema: &Schema, o: &Order) -> Vec<u8> {
        let v2 = schema.text().contains("note");
        match self.format {
            Format::Avro => {
                let mut fields = vec![
                    ("id".to_string(), A::Long(o.id)),
                    ("customer".into(), A::String(o.customer.clone())),
                    ("amount".into(), A::Double(o.amount)),
                ];
                if v2 {
                    fields.push((
                        "note".into(),
                        match &o.note {
                            None => A::Union(0, Box::new(A::Null)),
                            Some(n) => A::Union(1, Box::new(A::String(n.clone()))),
                        },
                    ));
                }
                let body = schema.as_avro().unwrap().encode(A::Record(fields)).unwrap();
                wire::encode(schema.id(), &body)
            }
            Format::Protobuf => {
                let desc = schema.as_protobuf().unwrap().message(&[0]).unwrap();
                let mut m = DynamicMessage::new(desc);
                m.set_field_by_name("id", P::I64(o.id));
                m.set_field_by_name("customer", P::String(o.customer.clone()));
                m.set_field_by_name("amount", P::F64(o.amount));
                if let (true, Some(n)) = (v2, &o.note) {
                    m.set_field_by_name("note", P::String(n.clone()));
                }
                wire::encode_protobuf(schema.id(), &[0], &m.encode_to_vec())
            }
            _ => {
                let mut doc = json!({"id": o.id, "customer": o.customer, "amount": o.amount});
                if v2 {
                    doc["note"] = json!(o.note);
                }
                wire::encode(schema.id(), doc.to_string().as_bytes())
            }
        }
    }
}

async fn register(c: &RegistryClient, codec: &Codec, subject: &str, text: &str) -> Arc<Schema> {
    let id = c.register(subject, codec.schema_type, text).await.unwrap();
    c.schema(id).await.unwrap()
}

fn order(rng: &mut StdRng, id: i64, note: Option<String>) -> Order {
    Order {
        id,
        customer: format!("c{}", rng.gen_range(0..50)),
        amount: rng.gen_range(0..100_000) as f64 / 100.0,
        note,
    }
}

async fn table(db: &TestDb, table: &str, with_note: bool) -> BTreeMap<i64, Order> {
    let note = if with_note { "note" } else { "NULL::text" };
    let rows: Vec<(i64, String, f64, Option<String>)> = sqlx::query_as(&format!(
        "SELECT id, customer, amount::float8, {note} FROM {table}"
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, customer, amount, note)| {
            (
                id,
                Order {
                    id,
                    customer,
                    amount,
                    note,
                },
            )
        })
        .collect()
}

async fn scenario(codec: Codec, name: &str) {
    let mut rng = StdRng::seed_from_u64(test_seed(name));
    let c = RegistryClient::new(&RegistryConfig::new(registry_url())).unwrap();
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let subject = format!("{}-value", topic.name);
    let v1 = register(&c, &codec, &subject, codec.v1).await;
    let route = format!(
        "[[route]]\ntopic = \"{}\"\ntable = \"orders\"\nkey = \"id\"\nformat = \"{}\"\n\
         create_table = true\nevolve = \"add_columns\"\n",
        topic.name, codec.format
    );
    let registry = format!("[schema_registry]\nurl = \"{}\"\n", registry_url());
    let cfg = SinkConfig::with_routes(&db, &route, &registry);
    let mut model: BTreeMap<i64, Order> = BTreeMap::new();
    let send = |o: &Order, bytes: &[u8]| {
        let key = o.id.to_string();
        topic.send(partition_of(&key, 2), Some(&key), Some(bytes));
    };

    // v1: new orders, updates and exact re-sends, a SIGKILL in the middle.
    let mut sink = SinkProcess::start(&cfg);
    let mut sent: Vec<Order> = Vec::new();
    for round in 0..4 {
        for _ in 0..60 {
            let o = if sent.is_empty() || rng.gen_ratio(2, 3) {
                let id = rng.gen_range(0..150);
                order(&mut rng, id, None)
            } else {
                sent[rng.gen_range(0..sent.len())].clone()
            };
            send(&o, &codec.encode(&v1, &o));
            model.insert(o.id, o.clone());
            sent.push(o);
        }
        topic.flush();
        if round == 1 {
            sink.kill9();
            sink = SinkProcess::start(&cfg);
        }
    }
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(table(&db, "orders", false).await, model, "after v1");

    // v2 adds `note`: the table gets the column with the first v2 message.
    let v2 = register(&c, &codec, &subject, codec.v2).await;
    assert_ne!(v1.id(), v2.id());
    let before = sink.metrics().await.unwrap();
    // The current state of some orders again, re-encoded under v2 (note
    // left null): the same events, so duplicates.
    let reencoded: Vec<Order> = model.values().take(25).cloned().collect();
    for o in &reencoded {
        send(o, &codec.encode(&v2, o));
    }
    for i in 0..40 {
        let note = rng.gen_ratio(1, 2).then(|| format!("note {i}"));
        let id = rng.gen_range(100..200);
        let o = order(&mut rng, id, note);
        send(&o, &codec.encode(&v2, &o));
        model.insert(o.id, o);
    }
    // Poison: no magic byte, an id the registry does not know, a v2 header
    // on a body that does not decode.
    topic.send(0, Some("p1"), Some(b"plain text, no header"));
    topic.send(
        0,
        Some("p2"),
        Some(&wire::encode(2_000_000_000, b"\x02\x04")),
    );
    topic.send(0, Some("p3"), Some(&wire::encode(v2.id(), &[0xff; 3])));
    topic.flush();
    wait_caught_up(&db, &cfg.group, &topic, T).await;

    assert_eq!(table(&db, "orders", true).await, model, "after v2");
    let after = sink.metrics().await.unwrap();
    let dups = metric(&after, "kafka_pg_sink_duplicates_total")
        - metric(&before, "kafka_pg_sink_duplicates_total");
    assert!(
        dups >= reencoded.len() as f64,
        "{dups} duplicates for {} re-encoded events",
        reencoded.len()
    );
    assert_metrics_identity(&after);
    let reasons: Vec<(String, String)> =
        sqlx::query_as("SELECT reason, error FROM sink_dead_letters ORDER BY message_key")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let codes: Vec<&str> = reasons.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        codes,
        ["no_magic_byte", "unknown_schema", "undecodable"],
        "{reasons:?}"
    );
    assert!(reasons[1].1.contains("2000000000"), "{reasons:?}");
    assert!(reasons[2].1.contains(&v2.id().to_string()), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_topic_with_evolving_schema() {
    scenario(AVRO, "avro").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_topic_with_evolving_schema() {
    scenario(PROTOBUF, "protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_topic_with_evolving_schema() {
    scenario(JSON_SCHEMA, "json_schema").await;
}
