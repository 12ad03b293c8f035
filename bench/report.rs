//! The results file, the ratios against the ceilings, and the medians of
//! several runs.

use crate::*;

/// Ratios against the ceilings (and peers) of the same run, printed and
/// written to bench/results/<date>.json.
pub(crate) fn report(b: &Bench, mut out: Results) -> anyhow::Result<()> {
    let ratios = ratios(&out);
    println!("\n{:<36} {:>14}", "measure", "value");
    for (k, v) in &out {
        if let Some(x) = v.as_f64() {
            println!("{k:<36} {x:>14.1}");
        }
    }
    println!("\n{:<36} {:>8} {:>8}", "ratio", "value", "target");
    for (k, v, target) in ratios {
        println!("{k:<36} {v:>8.2} {target:>8}");
        if v.is_finite() {
            out.insert(k, json!(v));
        }
    }
    out.insert("date", json!(b.stamp));
    out.insert("events", json!(b.n));
    out.insert("distinct_events", json!(b.distinct));
    out.insert("keys", json!(b.keys.name()));
    out.insert("partitions", json!(PARTITIONS));
    out.insert(
        "cores",
        json!(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)),
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.json", &b.stamp[..15]));
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `bench --medians FILE…`: each ratio of several result files and its
/// median. One run's ratio moves with its ceilings (±0.1 here); the median
/// of several runs is the number to quote.
pub(crate) fn medians(files: &[String]) -> anyhow::Result<()> {
    let runs: Vec<BTreeMap<String, Value>> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {f}"))
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "{:<36} {:>8} {:>8}   runs, sorted",
        "ratio", "median", "target"
    );
    for (k, _, target) in ratios(&Results::new()) {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(k)?.as_f64()).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let median = median(&v);
        let all: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        println!("{k:<36} {median:>8.2} {target:>8}   {}", all.join(" "));
    }
    freshness_medians(&runs);
    Ok(())
}

/// The freshness phase's milliseconds (p50, p99, max) and achieved rates:
/// each one's median over the runs and its values, in the runs' order.
fn freshness_medians(runs: &[BTreeMap<String, Value>]) {
    let mut keys: Vec<&String> = runs
        .iter()
        .flat_map(|r| r.keys())
        .filter(|k| {
            k.starts_with("freshness_")
                && [
                    "_p50_ms",
                    "_p99_ms",
                    "_max_ms",
                    "_achieved_per_s",
                    "_half_rate_per_s",
                ]
                .iter()
                .any(|s| k.ends_with(s))
        })
        .collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return;
    }
    println!("\n{:<40} {:>9}   runs, in order", "freshness", "median");
    for k in keys {
        let v: Vec<f64> = runs.iter().filter_map(|r| r.get(k)?.as_f64()).collect();
        let all: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        println!("{k:<40} {:>9.1}   {}", median(&v), all.join(" "));
    }
}

/// The printed ratios of one run's results: name, value, target.
pub(crate) fn ratios(out: &Results) -> Vec<(&'static str, f64, &'static str)> {
    let f = |k: &str| f(out, k);
    // A sink can go no faster than the broker hands it messages.
    let vs_ceiling = |rate: &str, ceiling: &str| f(rate) / f(ceiling).min(f("broker_read_per_s"));
    let mut ratios = vec![
        (
            "write_path_vs_pg_ceiling",
            f("write_path_per_s") / f("ceiling_rows_per_s"),
            ">= 0.6",
        ),
        (
            "document_sink_vs_ceiling",
            vs_ceiling("sink_events_per_s", "ceiling_rows_per_s"),
            ">= 0.8",
        ),
        (
            "typed_sink_vs_typed_ceiling",
            vs_ceiling("typed_sink_events_per_s", "typed_ceiling_rows_per_s"),
            ">= 0.6",
        ),
        (
            "replay_vs_paired_ceiling",
            f("replay_vs_paired_ceiling"),
            ">= 0.9",
        ),
        (
            // The fastest this replay's CPU demand (sink, broker, Postgres,
            // all busy time per event) allows on this machine's cores, as a
            // ratio of the same ceiling: the target is out of reach in a
            // run where this is below it, whatever the overlap.
            "replay_cpu_bound_vs_paired_ceiling",
            f("cores") * 1e6 / f("replay_cpu_us_per_event") / f("replay_paired_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "replay_vs_filtered_ceiling",
            vs_ceiling("replay_events_per_s", "dup_filtered_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "document_sink_vs_prestaged_ceiling",
            vs_ceiling("sink_events_per_s", "prestaged_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "document_sink_vs_stream_ceiling",
            vs_ceiling("sink_events_per_s", "stream_ceiling_events_per_s"),
            "(info)",
        ),
        (
            "typed_sink_vs_typed_stream_ceiling",
            vs_ceiling(
                "typed_sink_events_per_s",
                "typed_stream_ceiling_events_per_s",
            ),
            "(info)",
        ),
        (
            // The sink's commits alone (no Kafka, nothing beside them) over
            // the same batches as the stream ceiling: what its SQL costs.
            "document_commits_vs_stream_ceiling",
            f("document_commits_events_per_s") / f("stream_ceiling_events_per_s"),
            "(info)",
        ),
        (
            "typed_commits_vs_typed_stream_ceiling",
            f("typed_commits_events_per_s") / f("typed_stream_ceiling_events_per_s"),
            "(info)",
        ),
        (
            "replay_vs_replay_stream_ceiling",
            vs_ceiling("replay_events_per_s", "replay_stream_ceiling_events_per_s"),
            "(info)",
        ),
        (
            "replay_vs_antijoin_ceiling",
            vs_ceiling("replay_events_per_s", "dup_antijoin_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "replay_vs_dup_ceiling",
            vs_ceiling("replay_events_per_s", "dup_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "typed_vs_debezium",
            f("typed_sink_events_per_s") / f("debezium_events_per_s"),
            ">= 3",
        ),
        (
            // The second typed shape (text, bigint, double, two nested
            // fields, a version guard): where the peer does relatively well.
            "plain_vs_debezium",
            f("plain_sink_events_per_s") / f("plain_debezium_events_per_s"),
            ">= 3",
        ),
        (
            // Postgres's CPU per event under each system, both shapes: what
            // each one's statements cost the database.
            "typed_postgres_cpu_vs_debezium",
            f("typed_sink_postgres_cpu_us_per_event") / f("debezium_postgres_cpu_us_per_event"),
            "<= 1",
        ),
        (
            "plain_postgres_cpu_vs_debezium",
            f("plain_sink_postgres_cpu_us_per_event")
                / f("plain_debezium_postgres_cpu_us_per_event"),
            "<= 1",
        ),
        (
            // The sink process against the Connect worker (its startup
            // included), per event.
            "plain_process_cpu_vs_worker",
            f("plain_sink_process_cpu_us_per_event") / f("plain_debezium_worker_cpu_us_per_event"),
            "(info)",
        ),
        (
            // A whole database from a Debezium snapshot (20 tables, the
            // tables created from the events), the same topics, each sink
            // configured for a capture: kafka-pg-sink from its start,
            // the Debezium JDBC sink from every task RUNNING.
            "capture_vs_debezium",
            f("capture_events_per_s") / f("capture_debezium_events_per_s"),
            ">= 1.0",
        ),
        (
            "capture_vs_debezium_incl_startup",
            f("capture_events_per_s") / f("capture_debezium_incl_startup_per_s"),
            "(info)",
        ),
        (
            // The typed route into a table distributed over a Citus
            // coordinator and two workers, all on this machine's cores,
            // against one Postgres: the cost of distribution.
            "citus_vs_single_postgres",
            f("citus_sink_events_per_s") / f("typed_sink_events_per_s"),
            "(info)",
        ),
        (
            "avro_vs_json_typed",
            f("avro_sink_events_per_s") / f("typed_sink_events_per_s"),
            "(info)",
        ),
        (
            "sink_vs_naive",
            f("sink_events_per_s") / f("naive_events_per_s"),
            ">= 20",
        ),
        (
            "partitions_vs_typed",
            f("partitions_events_per_s") / f("typed_sink_events_per_s"),
            "(info)",
        ),
        (
            "partitions_round_trips_per_transaction",
            f("partitions_round_trips_per_transaction"),
            "(info)",
        ),
    ];
    // Only when the phase ran (or for the list of keys `medians` reads).
    if out.is_empty() || out.contains_key("freshness_seconds_per_rate") {
        ratios.extend(freshness_ratios(out));
    }
    ratios
}

/// The freshness phase's ratios: at each rate, the typed route's p50 and
/// p99 of produce-to-visible ÷ the Debezium JDBC sink's (defaults and best
/// configuration), and the two absolute targets (milliseconds).
fn freshness_ratios(out: &Results) -> Vec<(&'static str, f64, &'static str)> {
    let f = |k: &str| f(out, k);
    let mut v = Vec::new();
    for rate in ["1k", "2k", "5k", "20k", "half"] {
        for peer in ["debezium", "debezium_best"] {
            for q in ["p50", "p99"] {
                let target = match (rate, q) {
                    ("2k", "p50") => "<= 1",
                    ("2k", "p99") => "<= 0.33",
                    _ => "(info)",
                };
                v.push((
                    prefixed(&format!("freshness_{rate}_{q}"), &format!("vs_{peer}")),
                    f(&format!("freshness_sink_{rate}_{q}_ms"))
                        / f(&format!("freshness_{peer}_{rate}_{q}_ms")),
                    target,
                ));
            }
        }
    }
    // What the sinks own: from the broker's append to the row, without the
    // production leg both share (its p99 alone is 5–10 ms here).
    v.push((
        "freshness_2k_after_append_p99_vs_debezium",
        f("freshness_sink_2k_after_append_p99_ms") / f("freshness_debezium_2k_after_append_p99_ms"),
        "(info)",
    ));
    // Milliseconds, not ratios: listed here for their medians over runs.
    v.push((
        "freshness_sink_2k_p99_ms",
        f("freshness_sink_2k_p99_ms"),
        "< 50 ms",
    ));
    v.push((
        "freshness_sink_half_p99_ms",
        f("freshness_sink_half_p99_ms"),
        "< 250 ms",
    ));
    v
}
