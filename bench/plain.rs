//! Phase `plain`: a second typed shape, one where the Debezium JDBC sink
//! does relatively well — text, bigint and double columns, two of them
//! read from a nested object, a version guard on the sink's route; no
//! `numeric` or `timestamptz` (data::plain_json). The same events as the
//! main topic, re-encoded into their own topic; kafka-pg-sink and (with
//! `BENCH_PEERS=1`) the Debezium JDBC sink's best configuration each write
//! it into the same table shape, with CPU per event of each system's
//! process, Postgres and the broker; the two tables must be equal.

use crate::*;

pub(crate) async fn plain(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    let topic = format!("{}-plain", b.topic);
    let records: Vec<(i32, &str, Vec<u8>)> = b
        .orders
        .iter()
        .map(|o| {
            (
                o.partition,
                o.key.as_str(),
                data::plain_json(o).into_bytes(),
            )
        })
        .collect();
    produce(&b.brokers, &topic, &records).await?;
    eprintln!("running kafka-pg-sink end to end (plain typed shape)…");
    b.exec(&format!("CREATE TABLE orders_plain ({})", data::PLAIN_DDL))
        .await?;
    let route = format!(
        "topic = \"{topic}\"\ntable = \"orders_plain\"\nkey = \"order_id\"\nformat = \"json\"\n\
         version = \"/version\"\ncolumns = {}",
        data::PLAIN_COLUMNS
    );
    let run = start_sink(b, "plain", &route, "")?;
    measure_sink(b, &run, "plain_sink", out).await?;
    run.stop();
    let rows = count(b, "orders_plain").await?;
    anyhow::ensure!(
        rows == b.distinct,
        "plain sink wrote {rows} rows, expected {}",
        b.distinct
    );
    if !peers_run() {
        return Ok(());
    }
    eprintln!("running the Debezium JDBC sink (best configuration) on the plain topic…");
    let env = [
        ("PEER_DDL", data::PLAIN_DDL),
        ("PEER_SCHEMA", data::PLAIN_CONNECT_SCHEMA),
        ("PEER_FLATTEN", "1"),
        ("PEER_TS_FIELD", "-"),
    ];
    debezium_best(
        b,
        &topic,
        "orders_plain_debezium",
        &env,
        "plain_debezium",
        out,
    )
    .await?;
    let differ: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders_plain s FULL JOIN orders_plain_debezium d USING (order_id) \
         WHERE (s.customer, s.qty, s.score, s.version, s.meta_region, s.meta_weight) \
               IS DISTINCT FROM (d.customer, d.qty, d.score, d.version, d.meta_region, d.meta_weight)",
    )
    .fetch_one(&b.pool)
    .await?;
    anyhow::ensure!(
        differ == 0,
        "the two systems' plain tables differ in {differ} rows"
    );
    Ok(())
}
