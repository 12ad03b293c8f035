//! Phase `freshness`: how old an event is when it becomes visible in the
//! table, at fixed production rates, for the typed route and (with
//! `BENCH_PEERS=1`) the Debezium JDBC sink in its defaults and in its best
//! throughput configuration.
//!
//! The probe costs the systems nothing while they run: every event carries
//! the microseconds since the epoch at which the bench handed it to the
//! producer (`sent_us`), and the target table has a column no sink writes,
//! `written_at timestamptz DEFAULT clock_timestamp()`, stamped by Postgres
//! as each row is inserted. After the last rate, one query per table takes
//! the percentiles of `written_at - sent_us` per rate over all rows.
//! Producer, sinks and Postgres share one machine, so one clock. A row is
//! stamped inside its transaction and visible once that commits: the rest
//! of the statement and the COMMIT (its WAL flush) are left out, for every
//! sink alike (`freshness_sink_*_avg_commit_ms`, the whole transaction,
//! bounds it for kafka-pg-sink). The topics stamp records with the broker's
//! append time (`LogAppendTime`), which each sink also writes
//! (`appended_at`; the Debezium JDBC sink as milliseconds, `appended_ms`):
//! that splits the age into production (`append_*`: the producer and the
//! broker) and what follows (`after_append_*`: fetch, batch, write).
//!
//! Each system gets a topic and a table of its own, and all run side by
//! side, started one after another, each waited for until its consumer
//! group is stable and a warm-up (3 s at 1,000 events/s) is visible. Then,
//! rate by rate, each system in turn gets the rate for
//! `BENCH_FRESHNESS_SECONDS` (15) while the others wait idle, the first
//! system rotating from one rate to the next: the shared machine's load
//! drifts, and this way every system meets a rate within the same minute or
//! so. A bench thread paces the events in slices of 1 ms (the events due are
//! sent, each stamped as it goes; its achieved rate and worst lateness are
//! recorded), then the bench waits until the last event of every partition
//! is visible (4 primary-key lookups every 50 ms, after production only).
//! `<system>_<rate>_others_busy` is the share of the cores busy with neither
//! the system, Postgres, the broker nor the bench: other tenants.
//!
//! Rates: 1k, 2k, 5k and 20k events/s, and half of the saturated rate: the
//! typed phase's events/s of the same run when it ran (measured on a topic
//! produced beforehand: no producer shares the cores then), else
//! `BENCH_FRESHNESS_SATURATION` (80,000 events/s by default, about the
//! typed route's median on this machine: docs/performance.md).
//! `BENCH_FRESHNESS_RATES` (e.g. `2000,half`) replaces the list.

use crate::pacer::{events_at, Pacer};
use crate::*;

use rdkafka::groups::GroupList;

/// The orders with the send time, and the column Postgres stamps at write.
const FRESH_DDL: &str = "(order_id text PRIMARY KEY, customer text, amount numeric(12,2), \
     currency text, status text, version bigint, ts timestamptz, sent_us bigint, \
     appended_at timestamptz, appended_ms bigint, \
     written_at timestamptz DEFAULT clock_timestamp())";

/// The typed route's mapping: the orders' columns and the send time;
/// `written_at` is left to its default.
const FRESH_COLUMNS: &str = "{ order_id = \"/order_id\", customer = \"/customer\", \
     amount = \"/amount\", currency = \"/currency\", status = \"/status\", version = \"/version\", \
     ts = \"/ts\", sent_us = \"/sent_us\", appended_at = \"@kafka_timestamp\" }";

/// The Connect schema the Debezium JDBC sink reads the events with (the
/// peers' order schema, scripts/connect.sh, and `sent_us`).
const FRESH_SCHEMA: &str = r#"{"type":"struct","optional":false,"fields":[{"field":"order_id","type":"string","optional":false},{"field":"customer","type":"string","optional":true},{"field":"amount","type":"double","optional":true},{"field":"currency","type":"string","optional":true},{"field":"status","type":"string","optional":true},{"field":"version","type":"int64","optional":true},{"field":"ts","type":"string","optional":true},{"field":"sent_us","type":"int64","optional":true}]}"#;

/// The saturated rate when the typed phase did not run in this run.
const FALLBACK_SATURATION: f64 = 80_000.0;

/// Warm-up before the measured rates: the consumers are assigned, the JVM
/// has compiled its paths.
const WARMUP_RATE: f64 = 1_000.0;
const WARMUP_SECONDS: f64 = 3.0;

/// One production rate: its result-key label and events per second.
#[derive(Clone)]
pub(crate) struct Rate {
    pub label: String,
    pub per_s: f64,
}

/// The systems measured, in order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Sink,
    DebeziumDefaults,
    DebeziumBest,
}

impl System {
    /// Its name in result keys.
    fn key(self) -> &'static str {
        match self {
            System::Sink => "sink",
            System::DebeziumDefaults => "debezium",
            System::DebeziumBest => "debezium_best",
        }
    }
}

/// A running system under test.
enum Running {
    Sink(SinkRun),
    /// The Connect worker's name (scripts/connect.sh) and its pid.
    Connect(String, Option<u32>),
}

impl Running {
    fn group(&self) -> String {
        match self {
            Running::Sink(run) => run.group.clone(),
            Running::Connect(name, _) => format!("connect-{name}"),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Running::Sink(run) => Some(run.child.id()),
            Running::Connect(_, pid) => *pid,
        }
    }

    fn stop(self, b: &Bench) {
        match self {
            Running::Sink(run) => run.stop(),
            Running::Connect(name, _) => {
                // Kept for the post-mortem (`clean` removes the worker's state).
                if let Ok(log) = capture::connect_sh(b, &["log", &name]) {
                    let _ = std::fs::create_dir_all("/tmp/kafka-pg-sink-peer");
                    let _ =
                        std::fs::copy(log.trim(), format!("/tmp/kafka-pg-sink-peer/{name}.log"));
                }
                let _ = capture::connect_sh(b, &["clean", &name]);
            }
        }
    }
}

/// The rates of this run (see the module's documentation).
pub(crate) fn rates(out: &Results) -> anyhow::Result<Vec<Rate>> {
    let typed = f(out, "typed_sink_events_per_s");
    let saturation = if typed.is_finite() {
        typed
    } else {
        std::env::var("BENCH_FRESHNESS_SATURATION")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(FALLBACK_SATURATION)
    };
    let list = std::env::var("BENCH_FRESHNESS_RATES")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "1000,2000,5000,20000,half".into());
    list.split(',')
        .map(|r| match r.trim() {
            "half" => Ok(Rate {
                label: "half".into(),
                per_s: (saturation / 2.0).round(),
            }),
            n => {
                let per_s: f64 = n
                    .parse()
                    .with_context(|| format!("BENCH_FRESHNESS_RATES: {n}"))?;
                anyhow::ensure!(per_s >= 1.0, "BENCH_FRESHNESS_RATES: {n}");
                let label = if per_s % 1000.0 == 0.0 {
                    format!("{}k", per_s / 1000.0)
                } else {
                    format!("{per_s}")
                };
                Ok(Rate { label, per_s })
            }
        })
        .collect()
}

/// Phase `freshness`: every system at every rate; records under
/// `freshness_<system>_<rate>_…` p50, p99 and max of produce-to-visible in
/// milliseconds, the achieved rate, and CPU.
pub(crate) async fn freshness(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    let rates = rates(out)?;
    let seconds = std::env::var("BENCH_FRESHNESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15.0);
    let half = rates.iter().find(|r| r.label == "half");
    if let Some(h) = half {
        out.insert("freshness_half_rate_per_s", json!(h.per_s));
        out.insert(
            "freshness_half_rate_from",
            json!(if f(out, "typed_sink_events_per_s").is_finite() {
                "typed_sink_events_per_s"
            } else {
                "fallback"
            }),
        );
    }
    out.insert("freshness_seconds_per_rate", json!(seconds));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    out.insert("freshness_loadavg_before", json!(load.trim()));
    let mut systems = vec![System::Sink];
    if std::env::var("BENCH_PEERS").as_deref() == Ok("1") {
        systems.extend([System::DebeziumDefaults, System::DebeziumBest]);
    }
    let mut started = Vec::new();
    let result = async {
        for &sys in &systems {
            started.push(Target::start(b, sys).await?);
        }
        for t in &started {
            t.warm_up(b).await?;
        }
        measure_rates(b, &started, &rates, seconds, out).await
    }
    .await;
    let mut tables = Vec::new();
    for t in started {
        tables.push((t.sys, t.table.clone()));
        t.stop(b).await;
    }
    result?;
    for (sys, table) in tables {
        latencies(b, sys, &table, &rates, out).await?;
    }
    Ok(())
}

/// A system under test with its topic, table and producer.
struct Target {
    sys: System,
    topic: String,
    table: String,
    running: Option<Running>,
    pacer: Pacer,
}

impl Target {
    /// Creates the topic and table and starts the system on them.
    async fn start(b: &Bench, sys: System) -> anyhow::Result<Target> {
        let topic = format!("{}-fresh-{}", b.topic, sys.key());
        let table = format!("fresh_{}", sys.key());
        // The broker stamps each record as it appends it: `appended_at`
        // splits the age into production and consumption.
        create_topics(
            &b.brokers,
            std::slice::from_ref(&topic),
            PARTITIONS,
            &[("message.timestamp.type", "LogAppendTime")],
        )
        .await?;
        let mut t = Target {
            sys,
            pacer: Pacer::new(b, &topic)?,
            topic,
            table,
            running: None,
        };
        b.exec(&format!("CREATE TABLE {} {FRESH_DDL}", t.table))
            .await?;
        eprintln!("freshness: starting {}…", sys.key());
        match start(b, sys, &t.topic, &t.table) {
            Ok(r) => t.running = Some(r),
            Err(e) => {
                t.stop(b).await;
                return Err(e);
            }
        }
        Ok(t)
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("started")
    }

    /// Waits for the consumer group, then for a warm-up to be visible.
    async fn warm_up(&self, b: &Bench) -> anyhow::Result<()> {
        let members = if self.sys == System::DebeziumBest {
            4
        } else {
            1
        };
        wait_stable(b, &self.running().group(), members).await?;
        let warm = self
            .pacer
            .run("w".into(), WARMUP_RATE, WARMUP_SECONDS)
            .await?;
        wait_visible(b, &self.table, &warm.last_keys).await
    }

    /// Stops the system and deletes its group and topic (the table goes
    /// with the bench database).
    async fn stop(self, b: &Bench) {
        if let Some(r) = self.running {
            let group = r.group();
            r.stop(b);
            delete_group(b, &group).await;
        }
        delete_topic(b, &self.topic).await;
    }
}

/// Starts `sys` on `topic` into `table`.
fn start(b: &Bench, sys: System, topic: &str, table: &str) -> anyhow::Result<Running> {
    if sys == System::Sink {
        let route = format!(
            "topic = \"{topic}\"\ntable = \"{table}\"\nkey = \"order_id\"\nformat = \"json\"\n\
             columns = {FRESH_COLUMNS}"
        );
        return Ok(Running::Sink(start_sink(b, "fresh", &route, "")?));
    }
    let name = format!("kpgs-fresh-{}-{}", sys.key(), b.stamp.to_lowercase());
    let mut args = vec![
        "jdbc-sink-props",
        &name,
        "--topic",
        topic,
        "--url",
        &b.url,
        "--table",
        table,
        "--schema",
        FRESH_SCHEMA,
    ];
    // Debezium's defaults: 1 task, batches of 500; best (bench/README.md): 4
    // tasks, unnest insert, reduction buffer, batches of 5000.
    if sys == System::DebeziumBest {
        args.push("--best");
    }
    // The record's timestamp (the broker's append time) into `appended_ms`,
    // as milliseconds: the unnest insert binds a Connect Timestamp without
    // its milliseconds.
    args.extend([
        "transforms=hoistKey,ts,appended,appendedMs",
        "transforms.appended.type=org.apache.kafka.connect.transforms.InsertField$Value",
        "transforms.appended.timestamp.field=appended_ms",
        "transforms.appendedMs.type=org.apache.kafka.connect.transforms.TimestampConverter$Value",
        "transforms.appendedMs.field=appended_ms",
        "transforms.appendedMs.target.type=unix",
        "transforms.appendedMs.unix.precision=milliseconds",
    ]);
    let props = capture::connect_sh(b, &args)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("connector.properties");
    std::fs::write(&path, props)?;
    capture::connect_sh(b, &["start", &name, "-", path.to_str().unwrap()])?;
    let pid = capture::connect_sh(b, &["pid", &name])
        .ok()
        .and_then(|p| p.trim().parse().ok());
    Ok(Running::Connect(name, pid))
}

/// Every rate, and at each rate every system in turn, the first one
/// rotating from rate to rate: the machine's load drifts, and each system
/// meets each rate within the same minute or so. The systems not measured
/// wait idle (their consumers poll an empty topic).
async fn measure_rates(
    b: &Bench,
    targets: &[Target],
    rates: &[Rate],
    seconds: f64,
    out: &mut Results,
) -> anyhow::Result<()> {
    for (i, rate) in rates.iter().enumerate() {
        for k in 0..targets.len() {
            let t = &targets[(i + k) % targets.len()];
            segment(b, t, &format!("s{i}"), rate, seconds, out).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// One rate on one system: production, then until all of it is visible;
/// records the achieved rate, CPU and (kafka-pg-sink) batches and commits.
async fn segment(
    b: &Bench,
    t: &Target,
    seg: &str,
    rate: &Rate,
    seconds: f64,
    out: &mut Results,
) -> anyhow::Result<()> {
    let prefix = format!("freshness_{}_{}", t.sys.key(), rate.label);
    let running = t.running();
    let before = match running {
        Running::Sink(run) => run.metrics().await,
        Running::Connect(..) => String::new(),
    };
    let cpu = CpuMark::now(running.pid());
    let bench_cpu = proc_stats(std::process::id()).1;
    let sent = t.pacer.run(seg.into(), rate.per_s, seconds).await?;
    wait_visible(b, &t.table, &sent.last_keys).await?;
    let bench_cpu = proc_stats(std::process::id()).1 - bench_cpu;
    record_cpu(out, &prefix, &cpu, running.pid(), "event", sent.events);
    out.insert(
        prefixed(&prefix, "bench_cpu_us_per_event"),
        json!(bench_cpu * 1e6 / sent.events as f64),
    );
    // What else kept the cores busy: all busy time but the system's, the
    // Postgres and broker processes' and the bench's (its producer).
    let now = CpuMark::now(running.pid());
    let others = (now.busy - cpu.busy)
        - (now.process - cpu.process)
        - (now.postgres - cpu.postgres)
        - (now.broker - cpu.broker)
        - bench_cpu;
    out.insert(
        prefixed(&prefix, "others_busy"),
        json!((others / (now.total - cpu.total).max(1e-9)).max(0.0)),
    );
    out.insert(
        prefixed(&prefix, "achieved_per_s"),
        json!(sent.achieved_per_s),
    );
    out.insert(
        prefixed(&prefix, "pacer_max_late_ms"),
        json!(sent.max_late_ms),
    );
    if let Running::Sink(run) = running {
        let (batch, commit_ms) = phase_averages(&before, &run.metrics().await);
        out.insert(prefixed(&prefix, "avg_batch"), json!(batch));
        out.insert(prefixed(&prefix, "avg_commit_ms"), json!(commit_ms));
    }
    eprintln!(
        "freshness: {} at {} events/s: {} events sent at {:.0}/s (at worst {:.1} ms behind schedule)",
        t.sys.key(),
        rate.per_s,
        sent.events,
        sent.achieved_per_s,
        sent.max_late_ms
    );
    Ok(())
}

/// The produce-to-visible percentiles of every rate, from the one query
/// over the table, and a check that every event is there once.
async fn latencies(
    b: &Bench,
    sys: System,
    table: &str,
    rates: &[Rate],
    out: &mut Results,
) -> anyhow::Result<()> {
    type Stats = (String, i64, f64, f64, f64, f64, f64, f64, f64, f64);
    let rows: Vec<Stats> = sqlx::query_as(&format!(
        "SELECT split_part(order_id, '-', 1), count(*), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY total), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY total), max(total), min(total), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY append), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY append), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY total - append), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY total - append) \
         FROM (SELECT order_id, \
                      ((extract(epoch FROM written_at) * 1e6 - sent_us) / 1e3)::float8 AS total, \
                      ((coalesce(extract(epoch FROM appended_at) * 1e3, appended_ms) * 1e3 \
                        - sent_us) / 1e3)::float8 AS append \
               FROM {table}) s \
         GROUP BY 1"
    ))
    .fetch_all(&b.pool)
    .await?;
    for (i, rate) in rates.iter().enumerate() {
        let seg = format!("s{i}");
        let Some((_, n, p50, p99, max, min, append_p50, append_p99, after_p50, after_p99)) =
            rows.iter().find(|r| r.0 == seg)
        else {
            anyhow::bail!("freshness: no rows of {} at {}", sys.key(), rate.label);
        };
        let expected = events_at(rate.per_s, secs_of(out));
        anyhow::ensure!(
            *n as usize == expected,
            "freshness: {} wrote {n} rows at {}, expected {expected}",
            sys.key(),
            rate.label
        );
        // One clock: a negative age would mean the probe is wrong.
        anyhow::ensure!(*min >= 0.0, "freshness: negative age {min} ms");
        let prefix = format!("freshness_{}_{}", sys.key(), rate.label);
        out.insert(prefixed(&prefix, "p50_ms"), json!(p50));
        out.insert(prefixed(&prefix, "p99_ms"), json!(p99));
        out.insert(prefixed(&prefix, "max_ms"), json!(max));
        // Send to the broker's append (ms timestamps: ±1 ms), and what
        // follows it (consumer, batch, write).
        out.insert(prefixed(&prefix, "append_p50_ms"), json!(append_p50));
        out.insert(prefixed(&prefix, "append_p99_ms"), json!(append_p99));
        out.insert(prefixed(&prefix, "after_append_p50_ms"), json!(after_p50));
        out.insert(prefixed(&prefix, "after_append_p99_ms"), json!(after_p99));
        eprintln!(
            "freshness: {:<13} {:>6}: p50 {p50:7.1} ms  p99 {p99:7.1} ms  max {max:7.1} ms \
             (to the broker: p50 {append_p50:.1} p99 {append_p99:.1}; after it: p50 {after_p50:.1} p99 {after_p99:.1})",
            sys.key(),
            rate.label
        );
    }
    Ok(())
}

fn secs_of(out: &Results) -> f64 {
    f(out, "freshness_seconds_per_rate")
}

async fn delete_group(b: &Bench, group: &str) {
    if let Ok(ac) = ClientConfig::new()
        .set("bootstrap.servers", &b.brokers)
        .create::<AdminClient<DefaultClientContext>>()
    {
        let _ = ac.delete_groups(&[group], &AdminOptions::new()).await;
    }
}

/// Waits until `group` is stable with `members` members that hold
/// partitions: events produced before would wait for the assignment.
async fn wait_stable(b: &Bench, group: &str, members: usize) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b.brokers)
        .create()?;
    let t = Instant::now();
    loop {
        let list: Option<GroupList> = consumer
            .fetch_group_list(Some(group), Duration::from_secs(5))
            .ok();
        let stable = list
            .as_ref()
            .and_then(|l| l.groups().first())
            .is_some_and(|g| {
                g.state() == "Stable"
                    && g.members().len() == members
                    && g.members()
                        .iter()
                        .all(|m| m.assignment().is_some_and(|a| !a.is_empty()))
            });
        if stable {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(180),
            "freshness: group {group} not stable with {members} member(s) after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every key of `keys` is in `table`: primary-key lookups,
/// nothing scanned.
async fn wait_visible(b: &Bench, table: &str, keys: &[String]) -> anyhow::Result<()> {
    let t = Instant::now();
    let sql = format!("SELECT count(*) FROM {table} WHERE order_id = ANY($1)");
    loop {
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(keys)
            .fetch_one(&b.pool)
            .await?;
        if n as usize == keys.len() {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(900),
            "freshness: {table} still misses some of {keys:?} after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
