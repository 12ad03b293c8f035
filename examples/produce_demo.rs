//! Produces demo order events WITH duplicates for the quickstart:
//! N distinct events, ~30% re-sent, a few updated to a newer version, and two
//! malformed messages. Prints the expected outcome, computed here and not by
//! the sink, so the quickstart can compare.
//!
//! JSON (default): half of the re-sends carry a new `sent_at`, which the
//! route excludes from the hash; the malformed messages are not JSON / lack
//! `order_id`.
//!
//! `--avro <registry-url>`: registers `examples/demo_order.avsc` as
//! `<topic>-value` and writes the Confluent wire format. Re-sends are the
//! identical bytes (a table created from the schema compares column values,
//! so a new `sent_at` would be an update, not a duplicate); the malformed
//! messages have no magic byte / name a schema id the registry does not know.
//!
//! cargo run --example produce_demo -- <brokers> <topic> <n> [--avro <registry-url>]

use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use kafka_pg_sink::format::registry::{RegistryClient, RegistryConfig};
use kafka_pg_sink::format::{wire, Schema, SchemaType};
use num_bigint::BigInt;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

const ORDER_SCHEMA: &str = include_str!("demo_order.avsc");
/// 2026-11-25T10:00:00Z, the base of every `sent_at`.
const SENT_BASE_MS: i64 = 1_795_600_800_000;
/// A schema id no registry here has handed out.
const UNKNOWN_SCHEMA_ID: u32 = 2_000_000_000;

/// One event of order `i`: its `version`, and `sent` shapes `sent_at`.
struct Order {
    i: u64,
    version: u64,
    sent: u64,
}

impl Order {
    fn order_id(&self) -> String {
        format!("ord-{:06}", self.i)
    }

    fn customer(&self) -> String {
        format!("c{}", self.i % 97)
    }

    /// The amount in cents.
    fn cents(&self) -> u64 {
        (self.i * 31) % 500 * 100 + self.i % 100
    }

    fn status(&self) -> &'static str {
        if self.version == 1 {
            "created"
        } else {
            "paid"
        }
    }

    /// `sent_at` as minutes and seconds past 10:00.
    fn sent_at(&self) -> (u64, u64) {
        (self.sent % 60, (self.sent * 7) % 60)
    }

    fn json(&self) -> String {
        let (min, sec) = self.sent_at();
        format!(
            r#"{{"order_id":"{}","version":{},"customer":"{}","amount":{}.{:02},"status":"{}","sent_at":"2026-11-25T10:{min:02}:{sec:02}Z"}}"#,
            self.order_id(),
            self.version,
            self.customer(),
            self.cents() / 100,
            self.cents() % 100,
            self.status(),
        )
    }

    fn avro(&self) -> Avro {
        let (min, sec) = self.sent_at();
        let unscaled = BigInt::from(self.cents()).to_signed_bytes_be();
        Avro::Record(vec![
            ("order_id".into(), Avro::String(self.order_id())),
            ("version".into(), Avro::Long(self.version as i64)),
            ("customer".into(), Avro::String(self.customer())),
            ("amount".into(), Avro::Decimal(unscaled.into())),
            (
                "status".into(),
                Avro::Enum(u32::from(self.version != 1), self.status().into()),
            ),
            (
                "sent_at".into(),
                Avro::TimestampMillis(SENT_BASE_MS + (min * 60 + sec) as i64 * 1000),
            ),
        ])
    }
}

enum Encoding {
    Json,
    Avro(Arc<Schema>),
}

impl Encoding {
    /// Registers the order schema as `<topic>-value` and returns it.
    fn avro(registry_url: &str, topic: &str) -> Encoding {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let schema = rt.block_on(async {
            let c = RegistryClient::new(&RegistryConfig::new(registry_url)).expect("registry");
            let subject = format!("{topic}-value");
            let id = c
                .register(&subject, SchemaType::Avro, ORDER_SCHEMA)
                .await
                .unwrap_or_else(|e| panic!("registering {subject}: {e}"));
            c.schema(id).await.expect("the registered schema")
        });
        Encoding::Avro(schema)
    }

    fn encode(&self, o: &Order) -> Vec<u8> {
        match self {
            Encoding::Json => o.json().into_bytes(),
            Encoding::Avro(schema) => {
                let body = schema.as_avro().unwrap().encode(o.avro()).expect("avro");
                wire::encode(schema.id(), &body)
            }
        }
    }

    /// `sent` of a retry of order `i`'s first event (which has 0).
    fn resent(&self, i: u64) -> u64 {
        match self {
            Encoding::Json => i % 2,
            Encoding::Avro(_) => 0,
        }
    }

    /// Two messages the sink must turn into dead letters.
    fn malformed(&self) -> [(&'static str, Vec<u8>); 2] {
        match self {
            Encoding::Json => [
                ("bad-1", b"this is not json".to_vec()),
                ("bad-2", br#"{"version":1,"missing":"order_id"}"#.to_vec()),
            ],
            Encoding::Avro(schema) => {
                let valid = self.encode(&Order {
                    i: 0,
                    version: 1,
                    sent: 0,
                });
                let body = &valid[wire::HEADER_LEN..];
                debug_assert_eq!(wire::schema_id(&valid).ok(), Some(schema.id()));
                [
                    ("bad-1", b"plain text: no magic byte".to_vec()),
                    ("bad-2", wire::encode(UNKNOWN_SCHEMA_ID, body)),
                ]
            }
        }
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let registry = args.iter().position(|a| a == "--avro").map(|at| {
        let url = args.get(at + 1).cloned().expect("--avro <registry-url>");
        args.drain(at..at + 2);
        url
    });
    let brokers = args.get(1).map(String::as_str).unwrap_or("127.0.0.1:9092");
    let topic = args.get(2).map(String::as_str).unwrap_or("demo-orders");
    let n: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let encoding = match &registry {
        Some(url) => Encoding::avro(url, topic),
        None => Encoding::Json,
    };
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .create()
        .expect("producer");
    let send = |key: &str, payload: &[u8]| loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return,
            Err((_, _)) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let order = |i: u64, version: u64, sent: u64| encoding.encode(&Order { i, version, sent });
    let (mut produced, mut duplicates, mut updates) = (0u64, 0u64, 0u64);
    for i in 0..n {
        let key = format!("ord-{i:06}");
        send(&key, &order(i, 1, 0));
        produced += 1;
        if i % 10 < 3 {
            // A retry of the same event.
            send(&key, &order(i, 1, encoding.resent(i)));
            produced += 1;
            duplicates += 1;
        }
        if i % 50 == 0 {
            send(&key, &order(i, 2, 2));
            produced += 1;
            updates += 1;
        }
    }
    let malformed = encoding.malformed();
    for (key, payload) in &malformed {
        send(key, payload);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    println!(
        "produced={} distinct_orders={n} duplicates={duplicates} updates={updates} malformed={}",
        produced + malformed.len() as u64,
        malformed.len()
    );
}
