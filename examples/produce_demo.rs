//! Produces demo order events WITH duplicates for the quickstart:
//! N distinct events, ~30% re-sent (some with a new `sent_at`, which the
//! route excludes from the hash), a few updated to a newer version, and two
//! malformed messages. Prints the expected outcome, computed here and not by
//! the sink, so the quickstart can compare.
//!
//! cargo run --example produce_demo -- <brokers> <topic> <n>

use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brokers = args.get(1).map(String::as_str).unwrap_or("127.0.0.1:9092");
    let topic = args.get(2).map(String::as_str).unwrap_or("demo-orders");
    let n: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .create()
        .expect("producer");
    let send = |key: &str, payload: &str| loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return,
            Err((_, _)) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let order = |i: u64, version: u64, sent: u64| {
        format!(
            r#"{{"order_id":"ord-{i:06}","version":{version},"customer":"c{}","amount":{}.{:02},"status":"{}","sent_at":"2026-11-25T10:{:02}:{:02}Z"}}"#,
            i % 97,
            (i * 31) % 500,
            i % 100,
            if version == 1 { "created" } else { "paid" },
            sent % 60,
            (sent * 7) % 60
        )
    };
    let (mut produced, mut duplicates, mut updates) = (0u64, 0u64, 0u64);
    for i in 0..n {
        let key = format!("ord-{i:06}");
        send(&key, &order(i, 1, 0));
        produced += 1;
        if i % 10 < 3 {
            // A retry of the same event: identical, or with a new sent_at.
            send(&key, &order(i, 1, if i % 2 == 0 { 0 } else { 1 }));
            produced += 1;
            duplicates += 1;
        }
        if i % 50 == 0 {
            send(&key, &order(i, 2, 2));
            produced += 1;
            updates += 1;
        }
    }
    send("bad-1", "this is not json");
    send("bad-2", r#"{"version":1,"missing":"order_id"}"#);
    producer.flush(Duration::from_secs(30)).expect("flush");
    println!(
        "produced={} distinct_orders={n} duplicates={duplicates} updates={updates} malformed=2",
        produced + 2
    );
}
