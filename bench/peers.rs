//! Peers measured in the same run on the same topic (`BENCH_PEERS=1`).

use crate::*;

/// Phase 8 (BENCH_PEERS=1): the Debezium JDBC sink on Kafka Connect, best
/// configuration, alone on the same topic into the same typed table shape
/// (bench/peer-debezium.sh), and the table it wrote checked.
pub(crate) async fn peers(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    if !peers_run() {
        return Ok(());
    }
    eprintln!("running the Debezium JDBC sink (best configuration) on the same topic…");
    debezium_best(b, &b.topic, "orders_debezium", &[], "debezium", out).await
}

/// Whether the peers run (`BENCH_PEERS=1`).
pub(crate) fn peers_run() -> bool {
    std::env::var("BENCH_PEERS").as_deref() == Ok("1")
}

/// The Debezium JDBC sink, best configuration, from offset 0 of `topic`
/// into `table` until its committed offsets reach the end (`env`: the
/// script's shape settings, PEER_DDL …). Records under `prefix`: events/s
/// (with and without its startup), the worker's CPU per event (startup
/// included), and Postgres's and the broker's CPU per event over the run.
/// The table must hold one row per distinct key.
pub(crate) async fn debezium_best(
    b: &Bench,
    topic: &str,
    table: &str,
    env: &[(&str, &str)],
    prefix: &str,
    out: &mut Results,
) -> anyhow::Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    let cpu = CpuMark::now(None);
    let st = std::process::Command::new("bash")
        .arg(format!("{root}/bench/peer-debezium.sh"))
        .args([topic, &b.url, table, "best"])
        .env("KAFKA_BROKERS", &b.brokers)
        .envs(env.iter().copied())
        .output()?;
    anyhow::ensure!(
        st.status.success(),
        "peer bench failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    record_cpu(out, prefix, &cpu, None, "event", b.n);
    let line = String::from_utf8_lossy(&st.stdout);
    let peer: Value = serde_json::from_str(line.lines().last().unwrap_or("{}"))?;
    let rows = count(b, table).await?;
    anyhow::ensure!(
        rows == b.distinct,
        "the peer wrote {rows} rows into {table}, expected {}",
        b.distinct
    );
    let key = |s: &str| prefixed(prefix, s);
    out.insert(key("events_per_s"), peer["msgs_per_s"].clone());
    out.insert(
        key("incl_startup_per_s"),
        peer["incl_startup_per_s"].clone(),
    );
    out.insert(key("startup_s"), peer["startup_s"].clone());
    if let Some(cpu_s) = peer["worker_cpu_s"].as_f64() {
        out.insert(
            key("worker_cpu_us_per_event"),
            json!(cpu_s * 1e6 / b.n as f64),
        );
    }
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
