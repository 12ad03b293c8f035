//! Phase `partitions`: a thousand partitions on three replicas. 100 topics
//! of 10 partitions, one typed route and table each (a topic feeds one
//! route), consumed by three sink processes in one group. Each order of
//! the run goes to the topic and partition of its key, so a key's events
//! stay in order.
//!
//! Measured, in this order:
//! * a baseline: one sink on one empty partition, its resident memory once
//!   assigned (`partitions_baseline_rss_mb`);
//! * the join: the three replicas started together, until all 1,000
//!   partitions are owned and each replica holds some
//!   (`partitions_join_s`), and the drain of the whole topic set from
//!   their start (`partitions_events_per_s`; against the typed route on
//!   the run's 4 partitions, `partitions_vs_typed`), with CPU per event and
//!   each replica's memory: peak, and resident once caught up, over its
//!   share of the partitions beyond the baseline
//!   (`partitions_rss_kb_per_partition`, an upper bound: it keeps what the
//!   allocator retains from the batches);
//! * rebalances: one replica stopped (SIGTERM), until the two others own
//!   every partition (`partitions_scale_in_s`), and started again, until
//!   three hold them (`partitions_scale_out_s`);
//! * a restart with a backlog: all three stopped, an update of up to 100
//!   keys per partition produced, all three started again, until every
//!   position is at the end (`partitions_restart_catch_up_s`). One of them
//!   talks to Postgres through a counting forwarder (`wire_count.rs`: what
//!   the wire carries) and starts first, alone until it owns every
//!   partition: its round trips and statements per transaction
//!   (`partitions_round_trips_per_transaction`; per batch over its whole
//!   life, startup included: `partitions_round_trips_per_batch`), beside
//!   the partitions a batch carries (`partitions_partitions_per_batch`,
//!   from its metrics). A backlog spread over all partitions makes batches
//!   wide; the commit must not grow a round trip per partition.
//!
//! Every table is then checked against the model: its distinct keys, and
//! their final versions (version 3 for the updated keys).

use crate::net::partition_of;
use crate::wire_count::WireCounts;
use crate::*;

const TOPICS: usize = 100;
const TOPIC_PARTITIONS: i32 = 10;
const REPLICAS: usize = 3;
/// Keys per partition updated while no replica runs.
const UPDATES_PER_PARTITION: usize = 100;
const T: Duration = Duration::from_secs(600);

/// Where an order goes: its topic index and partition.
fn place(key: &str) -> (usize, i32) {
    let p = partition_of(key, TOPICS as i32 * TOPIC_PARTITIONS);
    ((p / TOPIC_PARTITIONS) as usize, p % TOPIC_PARTITIONS)
}

fn table(i: usize) -> String {
    format!("pt_{i:03}")
}

/// The version 3 update of a first version (the backlog).
fn updated(json: &str) -> String {
    json.replacen(r#""status":"new""#, r#""status":"shipped""#, 1)
        .replacen(r#""version":1"#, r#""version":3"#, 1)
}

pub(crate) async fn partitions(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    let topics: Vec<String> = (0..TOPICS)
        .map(|i| format!("{}-p{i:03}", b.topic))
        .collect();
    eprintln!("partitions: {TOPICS} topics × {TOPIC_PARTITIONS} partitions, {REPLICAS} replicas…");
    create_topics(&b.brokers, &topics, TOPIC_PARTITIONS, &[]).await?;
    for i in 0..TOPICS {
        b.exec(&format!("CREATE TABLE {} {}", table(i), data::TYPED_DDL))
            .await?;
    }
    produce_placed(b, &placed(b, &topics, |o| o.json.clone()))?;
    let baseline = baseline_rss(b).await?;
    out.insert("partitions_baseline_rss_mb", json!(baseline));
    let fleet = Fleet {
        b,
        group: format!("bench-partitions-{}", b.stamp),
        routes: (0..TOPICS)
            .map(|i| b.typed_route(&topics[i], &table(i), "json"))
            .collect::<Vec<_>>()
            .join("\n[[route]]\n"),
    };
    fleet.drain_and_rebalance(baseline, out).await?;
    let wave = update_wave(b, &topics);
    fleet.restart_with_backlog(&wave, out).await?;
    check_tables(b, &wave.iter().map(|r| r.key.to_string()).collect()).await?;
    for t in &topics {
        delete_topic(b, t).await;
    }
    Ok(())
}

/// The replicas' group and routes.
struct Fleet<'a> {
    b: &'a Bench,
    group: String,
    routes: String,
}

/// Every partition of the phase.
const TOTAL: usize = TOPICS * TOPIC_PARTITIONS as usize;

impl Fleet<'_> {
    /// A replica named `name` writing through `url`.
    fn start(&self, name: &str, url: &str) -> anyhow::Result<SinkRun> {
        start_member(self.b, url, name, &self.group, &self.routes, "")
    }

    /// Three replicas drain the topics from their start; then one leaves
    /// and comes back.
    async fn drain_and_rebalance(&self, baseline: f64, out: &mut Results) -> anyhow::Result<()> {
        let b = self.b;
        let name = |r: usize| format!("partitions{r}");
        let cpu = CpuMark::now(None);
        let started = Instant::now();
        let mut replicas = (0..REPLICAS)
            .map(|r| self.start(&name(r), &b.url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        await_owners(&replicas, TOTAL, REPLICAS).await?;
        out.insert("partitions_join_s", json!(started.elapsed().as_secs_f64()));
        b.wait_stored(&self.group, started, "the partitions phase")
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        out.insert("partitions_events_per_s", json!(b.n as f64 / seconds));
        record_cpu(out, "partitions", &cpu, None, "event", b.n);
        record_memory(&replicas, baseline, TOTAL, out);

        let scale = Instant::now();
        replicas.pop().expect("three").stop();
        await_owners(&replicas, TOTAL, REPLICAS - 1).await?;
        out.insert(
            "partitions_scale_in_s",
            json!(scale.elapsed().as_secs_f64()),
        );
        let scale = Instant::now();
        replicas.push(self.start(&name(REPLICAS - 1), &b.url)?);
        await_owners(&replicas, TOTAL, REPLICAS).await?;
        out.insert(
            "partitions_scale_out_s",
            json!(scale.elapsed().as_secs_f64()),
        );
        for r in replicas {
            r.stop();
        }
        Ok(())
    }

    /// `wave` produced while no replica runs, then all restarted. The
    /// counted replica starts first, alone until it owns every partition:
    /// its batches then span the backlog's partitions; the others join
    /// after.
    async fn restart_with_backlog(
        &self,
        wave: &[Placed<'_>],
        out: &mut Results,
    ) -> anyhow::Result<()> {
        let b = self.b;
        let target = b.stored_sum(&self.group).await + wave.len() as i64;
        produce_placed(b, wave)?;
        let (port, counts) = wire_count::start(upstream(&b.url)?).await?;
        let restarted = Instant::now();
        let mut replicas = vec![self.start("partitions-counted", &counted_url(&b.url, port)?)?];
        await_owners(&replicas, TOTAL, 1).await?;
        for r in 1..REPLICAS {
            replicas.push(self.start(&format!("partitions{r}"), &b.url)?);
        }
        while b.stored_sum(&self.group).await < target {
            anyhow::ensure!(restarted.elapsed() < T, "the restart did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out.insert(
            "partitions_restart_catch_up_s",
            json!(restarted.elapsed().as_secs_f64()),
        );
        out.insert("partitions_backlog_events", json!(wave.len()));
        record_round_trips(&replicas[0].metrics().await, &counts, out)?;
        for r in replicas {
            r.stop();
        }
        Ok(())
    }
}

/// The first `UPDATES_PER_PARTITION` first versions of every partition,
/// as version 3 updates.
fn update_wave<'a>(b: &'a Bench, topics: &'a [String]) -> Vec<Placed<'a>> {
    let mut taken: BTreeMap<(usize, i32), usize> = BTreeMap::new();
    placed(b, topics, |o| updated(&o.json))
        .into_iter()
        .zip(&b.orders)
        .filter(|(r, o)| {
            let n = taken.entry((r.topic, r.partition)).or_default();
            let take = o.version == 1 && *n < UPDATES_PER_PARTITION;
            *n += usize::from(take);
            take
        })
        .map(|(r, _)| r)
        .collect()
}

/// The counted replica's round trips and statements per transaction, and
/// its round trips per batch over its whole life, startup included (from
/// the wire), beside the partitions and messages a batch carried (from its
/// metrics).
fn record_round_trips(metrics: &str, counts: &WireCounts, out: &mut Results) -> anyhow::Result<()> {
    anyhow::ensure!(counts.opaque() == 0, "the counted replica used TLS");
    let batches = sum_family(metrics, "kafka_pg_sink_batches_total").max(1.0);
    let per_batch = |n: f64| n / batches;
    out.insert("partitions_counted_batches", json!(batches));
    out.insert(
        "partitions_partitions_per_batch",
        json!(per_batch(sum_family(
            metrics,
            "kafka_pg_sink_batch_partitions_sum"
        ))),
    );
    out.insert(
        "partitions_messages_per_batch",
        json!(per_batch(sum_family(
            metrics,
            "kafka_pg_sink_batch_size_sum"
        ))),
    );
    let [transactions, trips, statements, copies, prepares] = counts.transactions();
    let per_tx = |n: u64| n as f64 / transactions.max(1) as f64;
    out.insert("partitions_counted_transactions", json!(transactions));
    out.insert(
        "partitions_round_trips_per_transaction",
        json!(per_tx(trips)),
    );
    out.insert(
        "partitions_statements_per_transaction",
        json!(per_tx(statements)),
    );
    // A batch stages each table it writes with one COPY.
    out.insert("partitions_tables_per_transaction", json!(per_tx(copies)));
    // Of the round trips, the first uses of a statement on a connection.
    out.insert(
        "partitions_prepares_per_transaction",
        json!(per_tx(prepares)),
    );
    out.insert(
        "partitions_round_trips_per_batch",
        json!(per_batch(counts.round_trips() as f64)),
    );
    Ok(())
}

/// Waits until `replicas` own `total` partitions between them, with
/// `holders` of them holding some.
async fn await_owners(replicas: &[SinkRun], total: usize, holders: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let mut owned = Vec::new();
        for r in replicas {
            let m = r.metrics().await;
            owned.push(sum_family(&m, "kafka_pg_sink_assigned_partitions") as usize);
        }
        if owned.iter().sum::<usize>() == total
            && owned.iter().filter(|&&n| n > 0).count() == holders
        {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < T,
            "partitions: owners {owned:?} after {} s",
            T.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident memory of one idle sink holding one empty partition.
async fn baseline_rss(b: &Bench) -> anyhow::Result<f64> {
    let topic = format!("{}-p-baseline", b.topic);
    create_topics(&b.brokers, std::slice::from_ref(&topic), 1, &[]).await?;
    b.exec(&format!("CREATE TABLE pt_baseline {}", data::TYPED_DDL))
        .await?;
    let run = start_sink(
        b,
        "partitions-baseline",
        &b.typed_route(&topic, "pt_baseline", "json"),
        "",
    )?;
    await_owners(std::slice::from_ref(&run), 1, 1).await?;
    // Its positions read, its pool open: what it holds at rest.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = memory_mb(run.child.id(), "VmRSS:");
    run.stop();
    delete_topic(b, &topic).await;
    Ok(rss)
}

fn record_memory(replicas: &[SinkRun], baseline: f64, total: usize, out: &mut Results) {
    let peaks: Vec<f64> = replicas
        .iter()
        .map(|r| memory_mb(r.child.id(), "VmHWM:"))
        .collect();
    let resident: Vec<f64> = replicas
        .iter()
        .map(|r| memory_mb(r.child.id(), "VmRSS:"))
        .collect();
    let mean = resident.iter().sum::<f64>() / resident.len() as f64;
    out.insert("partitions_peak_rss_mb", json!(peaks));
    out.insert("partitions_rss_mb", json!(resident));
    out.insert(
        "partitions_rss_kb_per_partition",
        json!((mean - baseline).max(0.0) * 1024.0 / (total as f64 / replicas.len() as f64)),
    );
}

/// Every table holds the keys placed on its topic, each at its final
/// version.
async fn check_tables(
    b: &Bench,
    updated: &std::collections::HashSet<String>,
) -> anyhow::Result<()> {
    let mut expected = vec![(0i64, 0i64); TOPICS];
    for o in b.final_orders() {
        let (t, _) = place(&o.key);
        let version = if updated.contains(&o.key) {
            3
        } else {
            o.version
        };
        expected[t].0 += 1;
        expected[t].1 += version;
    }
    for (i, (rows, versions)) in expected.into_iter().enumerate() {
        let got: (i64, Option<i64>) = sqlx::query_as(&format!(
            "SELECT count(*), sum(version)::bigint FROM {}",
            table(i)
        ))
        .fetch_one(&b.pool)
        .await?;
        anyhow::ensure!(
            got == (rows, Some(versions).filter(|_| rows > 0)),
            "partitions: {} holds {got:?}, expected {rows} rows with versions summing to {versions}",
            table(i)
        );
    }
    Ok(())
}

/// The database URL's host:port.
fn upstream(url: &str) -> anyhow::Result<String> {
    let u = url::Url::parse(url)?;
    Ok(format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5432)
    ))
}

/// `url` through the forwarder on `port`, in clear (so it can be read).
fn counted_url(url: &str, port: u16) -> anyhow::Result<String> {
    let mut u = url::Url::parse(url)?;
    u.set_host(Some("127.0.0.1"))?;
    u.set_port(Some(port))
        .map_err(|_| anyhow::anyhow!("port"))?;
    u.query_pairs_mut().append_pair("sslmode", "disable");
    Ok(u.to_string())
}

/// An event on its way to the topic and partition of its key.
struct Placed<'a> {
    /// Index into the phase's topics.
    topic: usize,
    name: &'a str,
    partition: i32,
    key: &'a str,
    payload: String,
}

/// Every order of the run, placed, with `json` as its payload.
fn placed<'a>(b: &'a Bench, topics: &'a [String], json: fn(&Order) -> String) -> Vec<Placed<'a>> {
    b.orders
        .iter()
        .map(|o| {
            let (topic, partition) = place(&o.key);
            Placed {
                topic,
                name: &topics[topic],
                partition,
                key: &o.key,
                payload: json(o),
            }
        })
        .collect()
}

/// Produces the events, in order.
fn produce_placed(b: &Bench, records: &[Placed<'_>]) -> anyhow::Result<()> {
    send_all(
        &b.brokers,
        records
            .iter()
            .map(|r| (r.name, r.partition, r.key, r.payload.as_bytes())),
    )
}
