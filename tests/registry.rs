//! Against a real Confluent-compatible registry (Apicurio via scripts/registry.sh):
//!
//! ```sh
//! scripts/registry.sh ensure
//! REGISTRY_URL=$(scripts/registry.sh url) cargo test --test registry
//! # stops and restarts the registry; run alone:
//! REGISTRY_URL=$(scripts/registry.sh url) cargo test --test registry -- --ignored --test-threads 1
//! ```
//! Without REGISTRY_URL every test returns early (and says so).
//!
//! `PY_INTEROP_PYTHON` (optional): a Python with `confluent-kafka[avro,json,protobuf]`
//! (see scripts/registry-interop.py); the test runs that script against the
//! registry, then decodes each message it wrote and compares it with the JSON
//! the script expects.

use std::collections::HashMap;

use apache_avro::types::Value as A;
use kafka_pg_sink::format::registry::{
    RegistryClient, RegistryConfig, RegistryError, SchemaReference,
};
use kafka_pg_sink::format::{self, wire, Format, SchemaType};
use prost::Message as _;
use prost_reflect::{DynamicMessage, Value as P};
use serde_json::json;

fn client() -> Option<RegistryClient> {
    match std::env::var("REGISTRY_URL") {
        Ok(url) if !url.is_empty() => Some(RegistryClient::new(&RegistryConfig::new(url)).unwrap()),
        _ => {
            eprintln!("REGISTRY_URL not set: skipped (scripts/registry.sh ensure; REGISTRY_URL=$(scripts/registry.sh url))");
            None
        }
    }
}

/// Subjects unique per run: the registry is in-memory but shared by runs.
fn subject(base: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("it-{base}-{}-{nanos}", std::process::id())
}

const AVRO_V1: &str = r#"{"type":"record","name":"Order","namespace":"it","fields":[
  {"name":"id","type":"long"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}}]}"#;
const AVRO_V2: &str = r#"{"type":"record","name":"Order","namespace":"it","fields":[
  {"name":"id","type":"long"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}},
  {"name":"note","type":["null","string"],"default":null}]}"#;

fn avro_order(id: i64, note: Option<Option<&str>>) -> A {
    let mut fields = vec![
        ("id".to_string(), A::Long(id)),
        (
            "amount".into(),
            A::Decimal(apache_avro::Decimal::from([0x01, 0xe2, 0x40])),
        ), // 123456 → 1234.56
        ("at".into(), A::TimestampMillis(1_700_000_000_123)),
        ("status".into(), A::Enum(1, "PAID".into())),
    ];
    if let Some(n) = note {
        fields.push((
            "note".into(),
            match n {
                None => A::Union(0, Box::new(A::Null)),
                Some(s) => A::Union(1, Box::new(A::String(s.into()))),
            },
        ));
    }
    A::Record(fields)
}

#[tokio::test]
async fn avro_register_fetch_decode_and_evolve() {
    let Some(c) = client() else { return };
    let subj = subject("avro-value");
    let id1 = c.register(&subj, SchemaType::Avro, AVRO_V1).await.unwrap();
    // Same text again: same id.
    assert_eq!(
        c.register(&subj, SchemaType::Avro, AVRO_V1).await.unwrap(),
        id1
    );
    let id2 = c.register(&subj, SchemaType::Avro, AVRO_V2).await.unwrap();
    assert_ne!(id1, id2);

    let s1 = c.schema(id1).await.unwrap();
    let s2 = c.schema(id2).await.unwrap();
    assert_eq!(s1.schema_type(), SchemaType::Avro);
    assert!(std::sync::Arc::ptr_eq(&s1, &c.cached(id1).unwrap()));

    // Mixed versions on one "topic": decode each with its writer schema.
    let m1 = wire::encode(
        id1,
        &s1.as_avro().unwrap().encode(avro_order(1, None)).unwrap(),
    );
    let m2 = wire::encode(
        id2,
        &s2.as_avro()
            .unwrap()
            .encode(avro_order(1, Some(None)))
            .unwrap(),
    );
    let m3 = wire::encode(
        id2,
        &s2.as_avro()
            .unwrap()
            .encode(avro_order(2, Some(Some("gift"))))
            .unwrap(),
    );
    let mut out = Vec::new();
    for m in [&m1, &m2, &m3] {
        let id = format::schema_id(m).unwrap();
        let s = c.schema(id).await.unwrap();
        out.push(format::decode(Format::Avro, m, &s).unwrap());
    }
    assert_eq!(
        out[0],
        json!({"id": 1, "amount": 1234.56, "at": "2023-11-14T22:13:20.123Z", "status": "PAID"})
    );
    assert_eq!(out[2]["note"], json!("gift"));
    // v1 and v2 encodings of the same event: the same hash view.
    assert_eq!(format::hash_view(&out[0]), format::hash_view(&out[1]));
    assert_eq!(out[0]["amount"].to_string(), "1234.56");

    // The same text under another subject: Apicurio's ccompat ids are content
    // ids, so it is the same id; either way it decodes identically.
    let other = c
        .register(&subject("avro-copy"), SchemaType::Avro, AVRO_V1)
        .await
        .unwrap();
    let s3 = c.schema(other).await.unwrap();
    let m4 = wire::encode(
        other,
        &s3.as_avro().unwrap().encode(avro_order(1, None)).unwrap(),
    );
    assert_eq!(format::decode(Format::Avro, &m4, &s3).unwrap(), out[0]);
    eprintln!("avro ids: v1 {id1}, v2 {id2}, copy under another subject {other}");

    // Incompatible change is rejected by the registry (if compatibility is enforced).
    let bad = r#"{"type":"record","name":"Order","namespace":"it","fields":[{"name":"id","type":"string"}]}"#;
    match c.register(&subj, SchemaType::Avro, bad).await {
        Ok(id) => {
            eprintln!("registry accepted an incompatible schema (no compatibility rule): id {id}")
        }
        Err(e) => {
            eprintln!("incompatible schema rejected: {e}");
            assert!(!e.is_poison() && !e.is_transient());
        }
    }
}

const MONEY: &str = "syntax = \"proto3\";\npackage common;\nmessage Money { string currency = 1; int64 units = 2; }\n";
const ORDER: &str = "syntax = \"proto3\";\npackage shop;\nimport \"money.proto\";\nimport \"google/protobuf/timestamp.proto\";\n\
message Order { int64 id = 1; common.Money price = 2; google.protobuf.Timestamp at = 3; optional string note = 4;\n\
  message Line { string sku = 1; } repeated Line lines = 5; }\n";

#[tokio::test]
async fn protobuf_with_references() {
    let Some(c) = client() else { return };
    let money_subject = subject("money.proto");
    c.register(&money_subject, SchemaType::Protobuf, MONEY)
        .await
        .unwrap();
    let refs = [SchemaReference {
        name: "money.proto".into(),
        subject: money_subject.clone(),
        version: 1,
    }];
    let id = c
        .register_with_references(&subject("orders-value"), SchemaType::Protobuf, ORDER, &refs)
        .await
        .unwrap();
    let s = c.schema(id).await.unwrap();
    let p = s.as_protobuf().unwrap();
    let pool = p.pool();
    let mut money = DynamicMessage::new(pool.get_message_by_name("common.Money").unwrap());
    money.set_field_by_name("currency", P::String("EUR".into()));
    money.set_field_by_name("units", P::I64(i64::MAX));
    let mut ts = DynamicMessage::new(
        pool.get_message_by_name("google.protobuf.Timestamp")
            .unwrap(),
    );
    ts.set_field_by_name("seconds", P::I64(1_700_000_000));
    let mut order = DynamicMessage::new(pool.get_message_by_name("shop.Order").unwrap());
    order.set_field_by_name("id", P::I64(7));
    order.set_field_by_name("price", P::Message(money));
    order.set_field_by_name("at", P::Message(ts));
    let msg = wire::encode_protobuf(id, &[0], &order.encode_to_vec());
    let v = format::decode(Format::Protobuf, &msg, &s).unwrap();
    assert_eq!(
        v,
        json!({"id": 7, "price": {"currency": "EUR", "units": i64::MAX}, "at": "2023-11-14T22:13:20Z",
               "note": null, "lines": []})
    );
    // The nested type by message index [0, 0].
    let mut line = DynamicMessage::new(pool.get_message_by_name("shop.Order.Line").unwrap());
    line.set_field_by_name("sku", P::String("A-1".into()));
    assert_eq!(p.message_indexes("shop.Order.Line"), Some(vec![0, 0]));
    let msg = wire::encode_protobuf(id, &[0, 0], &line.encode_to_vec());
    assert_eq!(
        format::decode(Format::Protobuf, &msg, &s).unwrap(),
        json!({"sku": "A-1"})
    );
    let cols: Vec<String> = format::columns(&s).into_iter().map(|c| c.name).collect();
    assert_eq!(
        cols,
        ["id", "price_currency", "price_units", "at", "note", "lines"]
    );
}

#[tokio::test]
async fn json_schema_round_trip() {
    let Some(c) = client() else { return };
    let schema = r#"{"type":"object","properties":{"id":{"type":"integer"},"amount":{"type":"number"}},"required":["id"]}"#;
    let id = c
        .register(&subject("json-value"), SchemaType::Json, schema)
        .await
        .unwrap();
    let s = c.schema(id).await.unwrap();
    assert_eq!(s.schema_type(), SchemaType::Json);
    let msg = wire::encode(id, br#"{"id":18446744073709551615,"amount":0.10}"#);
    let v = format::decode(Format::JsonSchema, &msg, &s).unwrap();
    assert_eq!(v["id"].to_string(), "18446744073709551615");
    // An Avro route reading this id: wrong schema type, poison.
    let e = format::decode(Format::Avro, &msg, &s).unwrap_err();
    assert_eq!((e.reason(), e.schema_id()), ("wrong_schema_type", Some(id)));
}

#[tokio::test]
async fn unknown_id_is_not_found_and_poison() {
    let Some(c) = client() else { return };
    let e = c.schema(987_654_321).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::NotFound { id: 987_654_321 }),
        "{e:?}"
    );
    assert!(e.is_poison() && !e.is_transient());
    // A wrong base path (404 without a Confluent error code) is NOT poison.
    let url = std::env::var("REGISTRY_URL").unwrap();
    let wrong = RegistryClient::new(&RegistryConfig::new(format!(
        "{}/nope",
        url.trim_end_matches('/')
    )))
    .unwrap();
    let e = wrong.schema(1).await.unwrap_err();
    eprintln!("wrong base path: {e}");
    assert!(!e.is_poison(), "{e:?}");
}

#[tokio::test]
async fn primitive_schema_and_poison_body() {
    let Some(c) = client() else { return };
    let id = c
        .register(&subject("plain"), SchemaType::Avro, "\"string\"")
        .await
        .unwrap();
    let s = c.schema(id).await.unwrap();
    let msg = wire::encode(id, &[6, b'a', b'b', b'c']);
    assert_eq!(
        format::decode(Format::Avro, &msg, &s).unwrap(),
        json!("abc")
    );
    // Body that does not decode: poison naming the id.
    let e = format::decode(Format::Avro, &wire::encode(id, &[7]), &s).unwrap_err();
    assert_eq!((e.reason(), e.schema_id()), ("undecodable", Some(id)));
}

/// Stops the registry (scripts/registry.sh stop), checks that cached schemas
/// still serve and a fetch is `Unavailable`, then starts it again.
#[tokio::test]
#[ignore = "stops and restarts the registry: run alone"]
async fn registry_stopped_is_unavailable() {
    let Some(c) = client() else { return };
    let id = c
        .register(&subject("stop"), SchemaType::Avro, "\"long\"")
        .await
        .unwrap();
    c.schema(id).await.unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/registry.sh");
    let st = std::process::Command::new("bash")
        .args([script, "stop"])
        .status()
        .unwrap();
    assert!(st.success());
    let started = std::time::Instant::now();
    let e = c.schema(id + 1000).await.unwrap_err();
    eprintln!("stopped registry: {e} (after {:?})", started.elapsed());
    assert!(matches!(e, RegistryError::Unavailable(_)), "{e:?}");
    assert!(e.is_transient());
    assert!(c.cached(id).is_some());
    let st = std::process::Command::new("bash")
        .args([script, "ensure"])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Messages written by Python confluent-kafka serializers (see module doc).
#[tokio::test]
async fn python_serializers_interoperate() {
    let Some(c) = client() else { return };
    let Ok(python) = std::env::var("PY_INTEROP_PYTHON") else {
        eprintln!("PY_INTEROP_PYTHON not set: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/registry-interop.py");
    let out = std::process::Command::new(python)
        .args([script, &std::env::var("REGISTRY_URL").unwrap()])
        .arg(dir.path())
        .output()
        .unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    let mut checked = HashMap::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("bin") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let format = match stem.split('-').next().unwrap() {
            "avro" => Format::Avro,
            "protobuf" => Format::Protobuf,
            "json_schema" => Format::JsonSchema,
            other => panic!("unknown fixture prefix {other}"),
        };
        let bytes = std::fs::read(&path).unwrap();
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.with_extension("json")).unwrap())
                .unwrap();
        let s = c.schema(format::schema_id(&bytes).unwrap()).await.unwrap();
        let got = format::decode(format, &bytes, &s).unwrap();
        assert_eq!(got, want, "{stem}");
        checked.insert(stem, got);
    }
    eprintln!(
        "python fixtures decoded: {:?}",
        checked.keys().collect::<Vec<_>>()
    );
    assert_eq!(checked.len(), 3, "avro, json_schema and protobuf fixtures");
}

/// https with a private CA: `REGISTRY_TLS_PORT=18443 scripts/registry.sh ensure`, then
/// `REGISTRY_TLS_URL=$(REGISTRY_TLS_PORT=18443 scripts/registry.sh tls-url) REGISTRY_CA_FILE=$(scripts/registry.sh ca)`.
#[tokio::test]
async fn tls_with_a_private_ca() {
    let (Ok(url), Ok(ca)) = (
        std::env::var("REGISTRY_TLS_URL"),
        std::env::var("REGISTRY_CA_FILE"),
    ) else {
        eprintln!("REGISTRY_TLS_URL / REGISTRY_CA_FILE not set: skipped");
        return;
    };
    let trusted = RegistryClient::new(&RegistryConfig {
        ca_file: Some(ca.into()),
        ..RegistryConfig::new(url.clone())
    })
    .unwrap();
    let id = trusted
        .register(&subject("tls"), SchemaType::Avro, "\"double\"")
        .await
        .unwrap();
    let s = trusted.schema(id).await.unwrap();
    let msg = wire::encode(id, &1.5f64.to_le_bytes());
    assert_eq!(format::decode(Format::Avro, &msg, &s).unwrap(), json!(1.5));
    // Without the CA the certificate is not trusted: transient, not poison.
    let untrusted = RegistryClient::new(&RegistryConfig::new(url)).unwrap();
    let e = untrusted.schema(id).await.unwrap_err();
    eprintln!("untrusted certificate: {e}");
    assert!(matches!(e, RegistryError::Unavailable(_)), "{e:?}");
}
