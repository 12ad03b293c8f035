//! The benchmark's topic: JSON order events shaped like issue 16's (and
//! `bench/produce-orders.sh`'s, for the peers): 75% first versions of
//! distinct orders, then, interleaved, 10% exact re-sends and 15% version-2
//! updates. Kafka key = order_id. Deterministic.

/// One order event.
pub struct Order {
    pub key: String,
    pub partition: i32,
    pub json: String,
    pub customer: String,
    /// Hundredths (the amount has two decimals).
    pub cents: i64,
    pub currency: &'static str,
    pub status: &'static str,
    pub version: i64,
    /// Milliseconds since the epoch.
    pub ts_ms: i64,
}

/// `n` events; also returns the number of distinct orders.
pub fn generate(n: usize, partitions: i32) -> (Vec<Order>, usize) {
    let k = n * 75 / 100;
    let resends = n * 10 / 100;
    let updates = n - k - resends;
    let (mut rs, mut us) = (0usize, 0usize);
    let mut out = Vec::with_capacity(n);
    for j in 0..n {
        let (i, version) = if j < k {
            (j, 1)
        } else if (j - k) % 5 < 2 && rs < resends {
            rs += 1;
            (rs - 1, 1)
        } else if us < updates {
            us += 1;
            (resends + us - 1, 2)
        } else {
            rs += 1;
            (rs - 1, 1)
        };
        out.push(order(i, version, partitions));
    }
    (out, k)
}

fn order(i: usize, version: i64, partitions: i32) -> Order {
    let cents = (i % 10_000) as i64 + 100 + if version == 2 { 100 } else { 0 };
    let currency = if i.is_multiple_of(3) { "USD" } else { "EUR" };
    let status = if version == 2 { "paid" } else { "new" };
    let s = (i % 86_400) as i64;
    // 2026-11-27T00:00:00Z + s seconds
    let ts_ms = (1_795_737_600 + s) * 1000;
    let key = format!("o{i}");
    let customer = format!("c{}", i % 1000);
    let json = format!(
        r#"{{"order_id":"{key}","customer":"{customer}","amount":{}.{:02},"currency":"{currency}","status":"{status}","version":{version},"ts":"2026-11-27T{:02}:{:02}:{:02}Z"}}"#,
        cents / 100,
        cents % 100,
        s / 3600,
        s % 3600 / 60,
        s % 60
    );
    Order {
        partition: super::net::partition_of(&key, partitions),
        key,
        json,
        customer,
        cents,
        currency,
        status,
        version,
        ts_ms,
    }
}

/// The typed table of the orders (also what the Debezium peer writes).
pub const TYPED_DDL: &str = "(order_id text PRIMARY KEY, customer text, amount numeric(12,2), \
     currency text, status text, version bigint, ts timestamptz)";

/// The typed route's column mapping.
pub const TYPED_COLUMNS: &str = "{ order_id = \"/order_id\", customer = \"/customer\", \
     amount = \"/amount\", currency = \"/currency\", status = \"/status\", version = \"/version\", \
     ts = \"/ts\" }";

/// The orders as Avro (the typed route reads them into the same table).
pub const AVRO_SCHEMA: &str = r#"{"type":"record","name":"Order","namespace":"bench","fields":[
  {"name":"order_id","type":"string"},{"name":"customer","type":"string"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}},
  {"name":"currency","type":"string"},{"name":"status","type":"string"},
  {"name":"version","type":"long"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

/// The order as an Avro record of [`AVRO_SCHEMA`].
pub fn avro_record(o: &Order) -> apache_avro::types::Value {
    use apache_avro::types::Value as A;
    let unscaled = o.cents.to_be_bytes();
    let first = unscaled.iter().position(|b| *b != 0).unwrap_or(7);
    A::Record(vec![
        ("order_id".into(), A::String(o.key.clone())),
        ("customer".into(), A::String(o.customer.clone())),
        (
            "amount".into(),
            A::Decimal(apache_avro::Decimal::from(
                unscaled[first.min(6)..].to_vec(),
            )),
        ),
        ("currency".into(), A::String(o.currency.into())),
        ("status".into(), A::String(o.status.into())),
        ("version".into(), A::Long(o.version)),
        ("ts".into(), A::TimestampMillis(o.ts_ms)),
    ])
}
