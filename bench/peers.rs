//! Peers measured in the same run on the same topic (`BENCH_PEERS=1`).

use crate::*;

/// Phase 8 (BENCH_PEERS=1): the Debezium JDBC sink on Kafka Connect, best
/// configuration, alone on the same topic into the same typed table shape
/// (bench/peer-debezium.sh), and the table it wrote checked.
pub(crate) async fn peers(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    if std::env::var("BENCH_PEERS").as_deref() != Ok("1") {
        return Ok(());
    }
    eprintln!("running the Debezium JDBC sink (best configuration) on the same topic…");
    let root = env!("CARGO_MANIFEST_DIR");
    let st = std::process::Command::new("bash")
        .arg(format!("{root}/bench/peer-debezium.sh"))
        .args([&b.topic, &b.url, "orders_debezium", "best"])
        .env("KAFKA_BROKERS", &b.brokers)
        .output()?;
    anyhow::ensure!(
        st.status.success(),
        "peer bench failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let line = String::from_utf8_lossy(&st.stdout);
    let peer: Value = serde_json::from_str(line.lines().last().unwrap_or("{}"))?;
    let rows = count(b, "orders_debezium").await?;
    anyhow::ensure!(
        rows == b.distinct,
        "the peer wrote {rows} rows, expected {}",
        b.distinct
    );
    out.insert("debezium_events_per_s", peer["msgs_per_s"].clone());
    out.insert(
        "debezium_incl_startup_per_s",
        peer["incl_startup_per_s"].clone(),
    );
    out.insert("debezium_startup_s", peer["startup_s"].clone());
    Ok(())
}

/// Average batch size and commit latency between two scrapes of /metrics.
pub(crate) fn phase_averages(from: &str, to: &str) -> (f64, f64) {
    let d = |name: &str| sum_family(to, name) - sum_family(from, name);
    let batches = d("kafka_pg_sink_batch_size_count").max(1.0);
    (
        d("kafka_pg_sink_batch_size_sum") / batches,
        1000.0 * d("kafka_pg_sink_commit_duration_seconds_sum") / batches,
    )
}
