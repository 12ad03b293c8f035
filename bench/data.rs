//! The benchmark's topic: JSON order events shaped like issue 16's (and
//! `bench/produce-orders.sh`'s, for the peers): 75% first versions of
//! distinct orders, then, interleaved, 10% exact re-sends and 15% version-2
//! updates. Kafka key = order_id. Deterministic.
//!
//! Order ids are `o<n>` by default, rising through the topic, so a batch
//! arrives close to key order. Real keys are often random (UUIDs, hashes),
//! which costs Postgres more per row: `BENCH_KEYS=random` gives every order
//! 16 hex digits instead, a bijection of `n` (still unique, still
//! deterministic).

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

/// How order ids are spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// `o<n>`: rising through the topic.
    Sequential,
    /// 16 hex digits, scattered over the key space.
    Random,
}

impl Keys {
    /// `BENCH_KEYS`: `sequential` (default) or `random`.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("BENCH_KEYS").as_deref() {
            Err(_) | Ok("" | "sequential") => Ok(Keys::Sequential),
            Ok("random") => Ok(Keys::Random),
            Ok(other) => anyhow::bail!("BENCH_KEYS={other}: expected sequential or random"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Keys::Sequential => "sequential",
            Keys::Random => "random",
        }
    }

    /// Order `i`'s id.
    fn id(self, i: usize) -> String {
        match self {
            Keys::Sequential => format!("o{i}"),
            Keys::Random => format!("{:016x}", scatter(i as u64)),
        }
    }
}

/// SplitMix64's finaliser: a bijection on `u64`, so distinct orders keep
/// distinct ids, with neighbouring `i` far apart.
fn scatter(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` events; also returns the number of distinct orders.
pub fn generate(n: usize, partitions: i32, keys: Keys) -> (Vec<Order>, usize) {
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
        out.push(order(keys.id(i), i, version, partitions));
    }
    (out, k)
}

fn order(key: String, i: usize, version: i64, partitions: i32) -> Order {
    let cents = (i % 10_000) as i64 + 100 + if version == 2 { 100 } else { 0 };
    let currency = if i.is_multiple_of(3) { "USD" } else { "EUR" };
    let status = if version == 2 { "paid" } else { "new" };
    let s = (i % 86_400) as i64;
    // 2026-11-27T00:00:00Z + s seconds
    let ts_ms = (1_795_737_600 + s) * 1000;
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

/// The second typed shape (phase `plain`): the same events as text,
/// bigint and double values, two of them in a nested object — no numeric
/// or timestamptz, which cost the Debezium JDBC sink most. The table's key
/// is `order_id`; the sink's route guards on `version`.
pub fn plain_json(o: &Order) -> String {
    format!(
        r#"{{"order_id":"{}","customer":"{}","qty":{},"score":{},"version":{},"meta":{{"region":"{}","weight":{}}}}}"#,
        o.key,
        o.customer,
        o.cents,
        plain_score(o),
        o.version,
        o.currency,
        o.ts_ms
    )
}

/// A double with a short exact binary form, so both sinks store the same
/// value.
fn plain_score(o: &Order) -> f64 {
    o.cents as f64 / 8.0
}

/// The plain shape's table (both systems write it): the nested fields as
/// `meta_<field>`, Connect's `Flatten` naming.
pub const PLAIN_DDL: &str = "order_id text PRIMARY KEY, customer text, qty bigint, \
     score double precision, version bigint, meta_region text, meta_weight bigint";

/// The sink's column mapping of the plain shape.
pub const PLAIN_COLUMNS: &str = "{ order_id = \"/order_id\", customer = \"/customer\", \
     qty = \"/qty\", score = \"/score\", version = \"/version\", \
     meta_region = \"/meta/region\", meta_weight = \"/meta/weight\" }";

/// The plain shape's Connect schema (the Debezium JDBC sink reads plain
/// JSON values by it).
pub const PLAIN_CONNECT_SCHEMA: &str = r#"{"type":"struct","optional":false,"fields":[{"field":"order_id","type":"string","optional":false},{"field":"customer","type":"string","optional":true},{"field":"qty","type":"int64","optional":true},{"field":"score","type":"double","optional":true},{"field":"version","type":"int64","optional":true},{"field":"meta","type":"struct","optional":true,"fields":[{"field":"region","type":"string","optional":true},{"field":"weight","type":"int64","optional":true}]}]}"#;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn random_keys_keep_the_topic_shape() {
        let (seq, seq_distinct) = generate(20_000, 4, Keys::Sequential);
        let (rnd, rnd_distinct) = generate(20_000, 4, Keys::Random);
        assert_eq!(seq_distinct, rnd_distinct);
        let ids: HashSet<&str> = rnd.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(ids.len(), rnd_distinct, "random ids must stay distinct");
        assert!(rnd
            .iter()
            .all(|o| o.key.len() == 16 && o.json.contains(&o.key)));
        // Same events apart from the id: versions and contents line up.
        for (a, b) in seq.iter().zip(&rnd) {
            assert_eq!(
                (a.version, a.cents, a.status),
                (b.version, b.cents, b.status)
            );
        }
        // What random keys take away: `o<n>` rise from one order to the
        // next (all but a handful of steps); random ids rise about half the time.
        let rising = |orders: &[Order]| {
            let w = orders[..seq_distinct].windows(2);
            w.filter(|p| p[0].key < p[1].key).count() as f64 / (seq_distinct - 1) as f64
        };
        assert!(rising(&seq) > 0.99, "{}", rising(&seq));
        assert!((0.45..0.55).contains(&rising(&rnd)), "{}", rising(&rnd));
    }
}
