//! The sink as a process, end to end: document and typed routes, the
//! replay, Avro through the registry, replicas, and the naive baseline.

use crate::*;

/// The release binary running as a child process.
pub(crate) struct SinkRun {
    pub(crate) child: std::process::Child,
    cfg_path: PathBuf,
    port: u16,
    pub(crate) group: String,
    pub(crate) started: Instant,
    pub(crate) cpu_start: CpuMark,
    _dir: tempfile::TempDir,
}

impl SinkRun {
    pub(crate) async fn metrics(&self) -> String {
        net::http_get(self.port, "/metrics")
            .await
            .unwrap_or_default()
    }

    pub(crate) fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts the sink with one route (and extra TOML) under a new group.
pub(crate) fn start_sink(
    b: &Bench,
    name: &str,
    route: &str,
    extra: &str,
) -> anyhow::Result<SinkRun> {
    start_sink_on(b, &b.url, name, route, extra)
}

/// [`start_sink`] writing to the database at `url`.
pub(crate) fn start_sink_on(
    b: &Bench,
    url: &str,
    name: &str,
    route: &str,
    extra: &str,
) -> anyhow::Result<SinkRun> {
    let group = format!("bench-{name}-{}", b.stamp);
    start_member(b, url, name, &group, route, extra)
}

/// [`start_sink_on`] as a member of `group` (replicas: one `name` each, for
/// their logs).
pub(crate) fn start_member(
    b: &Bench,
    url: &str,
    name: &str,
    group: &str,
    route: &str,
    extra: &str,
) -> anyhow::Result<SinkRun> {
    let dir = tempfile::tempdir()?;
    let group = group.to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (mut cfg, _) = b.config(route, extra, &group, port)?;
    cfg.postgres.url = url.to_string();
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(&cfg_path, cfg.to_toml())?;
    // BENCH_LOG_DIR keeps each sink's log (with KAFKA_PG_SINK_LOG, e.g.
    // `kafka_pg_sink::store=debug,info` for per-batch timings).
    let log_dir = std::env::var_os("BENCH_LOG_DIR").map_or(dir.path().to_owned(), PathBuf::from);
    let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
    let cpu_start = CpuMark::now(None);
    let started = Instant::now();
    let child = std::process::Command::new(&b.sink_bin)
        .arg("--config")
        .arg(&cfg_path)
        .arg("run")
        .env_remove("DATABASE_URL")
        .stderr(log)
        .spawn()?;
    Ok(SinkRun {
        child,
        cfg_path,
        port,
        group,
        started,
        cpu_start,
        _dir: dir,
    })
}

/// Runs the sink from offset 0 until every offset is stored; records
/// events/s under `prefix`, and peak RSS, CPU, batch size and commit time.
pub(crate) async fn measure_sink(
    b: &Bench,
    run: &SinkRun,
    prefix: &str,
    out: &mut Results,
) -> anyhow::Result<()> {
    b.wait_stored(&run.group, run.started, prefix).await?;
    let seconds = run.started.elapsed().as_secs_f64();
    let cpu_s = record_phase(b, run, prefix, seconds, "", &run.cpu_start, out).await;
    out.insert(prefixed(prefix, "cpu_seconds"), json!(cpu_s));
    Ok(())
}

/// Records a phase of `run` that took `seconds` for the whole topic under
/// `prefix`: events/s, peak RSS, the average batch size and commit time
/// from the sink's metrics since `before` (a scrape, or "" for since start)
/// and CPU use since `cpu` ([`record_cpu`]). Returns the process's CPU
/// seconds so far.
pub(crate) async fn record_phase(
    b: &Bench,
    run: &SinkRun,
    prefix: &str,
    seconds: f64,
    before: &str,
    cpu: &CpuMark,
    out: &mut Results,
) -> f64 {
    let (rss, cpu_s) = proc_stats(run.child.id());
    record_cpu(out, prefix, cpu, Some(run.child.id()), "event", b.n);
    let key = |s: &str| prefixed(prefix, s);
    out.insert(key("events_per_s"), json!(b.n as f64 / seconds));
    out.insert(key("peak_rss_mb"), json!(rss));
    let (batch, commit_ms) = phase_averages(before, &run.metrics().await);
    out.insert(key("avg_batch"), json!(batch));
    out.insert(key("avg_commit_ms"), json!(commit_ms));
    cpu_s
}

/// A result key `<prefix>_<name>` (result keys live as long as the run).
pub(crate) fn prefixed(prefix: &str, name: &str) -> &'static str {
    Box::leak(format!("{prefix}_{name}").into_boxed_str())
}

/// Phase 3: the document route end to end, as a process. It keeps running
/// for phase 4.
pub(crate) async fn sink_document(b: &Bench, out: &mut Results) -> anyhow::Result<SinkRun> {
    eprintln!("running kafka-pg-sink end to end (document table)…");
    let run = start_sink(b, "sink", &b.document_route("sink_events"), "")?;
    measure_sink(b, &run, "sink", out).await?;
    let rows = count(b, "sink_events").await?;
    anyhow::ensure!(
        rows == b.distinct,
        "sink wrote {rows} rows, expected {}",
        b.distinct
    );
    Ok(run)
}

/// Phase 4b: a versioned document sink (`version = "/version"`) drains the
/// topic; it keeps running for the replay. Returns the run and its route.
pub(crate) async fn sink_versioned(
    b: &Bench,
    out: &mut Results,
) -> anyhow::Result<(SinkRun, String)> {
    eprintln!("running kafka-pg-sink end to end (versioned document table)…");
    let route = format!(
        "{}\nversion = \"/version\"",
        b.document_route("versioned_events")
    );
    let run = start_sink(b, "versioned", &route, "")?;
    measure_sink(b, &run, "versioned_sink", out).await?;
    let rows = count(b, "versioned_events").await?;
    anyhow::ensure!(rows == b.distinct, "versioned sink wrote {rows} rows");
    Ok((run, route))
}

/// Phase 4: `replay --to-earliest` on a running sink, recorded under
/// `prefix`. On the versioned route every re-read event is a duplicate or
/// stale (a no-op): `replay`, the measure with the target. On the route
/// without `version` a replay re-applies history — each key that changed
/// later goes back to its older state and forward again, real writes for
/// ~30% of this topic's events: `replay_unversioned`, for information.
///
/// With `paired` (the versioned route), the replay runs `REPLAY_ROUNDS`
/// times, each right after the pre-filter ceiling measured on the sink's own
/// table: the machine is shared, and the ceilings phase, a minute or more
/// earlier, measured 302k-546k rows/s in four runs within ten minutes. A
/// round's ceiling and replay see the same load; `replay_vs_paired_ceiling`
/// is the median of the rounds' ratios, `replay_events_per_s` the median
/// rate. CPU and batch figures are the last round's.
pub(crate) async fn replay(
    b: &Bench,
    run: SinkRun,
    prefix: &str,
    paired: Option<&str>,
    out: &mut Results,
) -> anyhow::Result<()> {
    eprintln!("replaying ({prefix})…");
    let mut ceiling = match paired {
        Some(route) => {
            let route = b.route_for(route).await?;
            let staged = prepare(std::slice::from_ref(&route), b.msgs.clone());
            let rows = staged.writes[0].upserts.clone();
            anyhow::ensure!(rows.len() == b.distinct, "{} stored rows", rows.len());
            let mut conn = PgConnection::connect(&b.url).await?;
            // Untimed: the first pass over rows the sink just wrote sets
            // their hint bits and ran 14-27% slower than the next ones,
            // which favoured the first round's replay.
            filtered_pass(b, &mut conn, &route, &rows).await?;
            Some((route, rows, conn))
        }
        None => None,
    };
    let rounds = if ceiling.is_some() { REPLAY_ROUNDS } else { 1 };
    let (mut rates, mut ratios, mut ceilings) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        if let Some((route, rows, conn)) = &mut ceiling {
            ceilings.push(filtered_pass(b, conn, route, rows).await?);
        }
        let before = run.metrics().await;
        let cpu = CpuMark::now(Some(run.child.id()));
        let seconds = replay_once(b, &run).await?;
        rates.push(b.n as f64 / seconds);
        if let Some(&c) = ceilings.last() {
            ratios.push(b.n as f64 / seconds / c.min(f(out, "broker_read_per_s")));
        }
        if round == rounds {
            record_phase(b, &run, prefix, seconds, &before, &cpu, out).await;
        }
    }
    out.insert(prefixed(prefix, "events_per_s"), json!(median(&rates)));
    if !ceilings.is_empty() {
        out.insert(prefixed(prefix, "rounds_events_per_s"), json!(rates));
        out.insert(
            prefixed(prefix, "rounds_ceiling_rows_per_s"),
            json!(ceilings),
        );
        out.insert(
            prefixed(prefix, "paired_ceiling_rows_per_s"),
            json!(median(&ceilings)),
        );
        out.insert(
            prefixed(prefix, "vs_paired_ceiling"),
            json!(median(&ratios)),
        );
    }
    run.stop();
    Ok(())
}

/// Rounds of the versioned replay, each paired with its ceiling.
pub(crate) const REPLAY_ROUNDS: usize = 3;

/// One `replay --to-earliest` on the running sink: seconds from the command
/// to every position stored again.
pub(crate) async fn replay_once(b: &Bench, run: &SinkRun) -> anyhow::Result<f64> {
    let t = Instant::now();
    let st = std::process::Command::new(&b.sink_bin)
        .args([
            "--config",
            run.cfg_path.to_str().unwrap(),
            "replay",
            "--to-earliest",
        ])
        .env_remove("DATABASE_URL")
        .output()?;
    anyhow::ensure!(
        st.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    // Wait for the rewind to be visible, then for the sink to reach the end again.
    while b.stored_sum(&run.group).await >= b.n as i64 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.wait_stored(&run.group, t, "the replay").await?;
    Ok(t.elapsed().as_secs_f64())
}

/// Phase 5: the typed route end to end (7 typed columns, text primary key).
pub(crate) async fn sink_typed(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("running kafka-pg-sink end to end (typed table)…");
    b.exec(&format!("CREATE TABLE orders_typed {}", data::TYPED_DDL))
        .await?;
    let run = start_sink(
        b,
        "typed",
        &b.typed_route(&b.topic, "orders_typed", "json"),
        "",
    )?;
    measure_sink(b, &run, "typed_sink", out).await?;
    run.stop();
    let rows = count(b, "orders_typed").await?;
    anyhow::ensure!(
        rows == b.distinct,
        "typed sink wrote {rows} rows, expected {}",
        b.distinct
    );
    Ok(())
}

/// Phase 6: the same events as Avro (Confluent wire format, schema in the
/// registry at $REGISTRY_URL) into the same typed table shape.
pub(crate) async fn sink_avro(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    let Ok(registry) = std::env::var("REGISTRY_URL") else {
        eprintln!("REGISTRY_URL not set: Avro phase skipped");
        return Ok(());
    };
    eprintln!("producing the events as Avro and running the typed route on them…");
    let client = RegistryClient::new(&RegistryConfig::new(&registry))?;
    let topic = format!("{}-avro", b.topic);
    let id = client
        .register(
            &format!("{topic}-value"),
            kafka_pg_sink::format::SchemaType::Avro,
            data::AVRO_SCHEMA,
        )
        .await?;
    let schema = client.schema(id).await?;
    let avro = schema.as_avro().expect("an Avro schema");
    let mut records = Vec::with_capacity(b.orders.len());
    for o in &b.orders {
        let body = avro
            .encode(data::avro_record(o))
            .map_err(anyhow::Error::msg)?;
        records.push((o.partition, o.key.as_str(), wire::encode(id, &body)));
    }
    produce(&b.brokers, &topic, &records).await?;
    b.exec(&format!("CREATE TABLE orders_avro {}", data::TYPED_DDL))
        .await?;
    let extra = format!("[schema_registry]\nurl = \"{registry}\"");
    let run = start_sink(
        b,
        "avro",
        &b.typed_route(&topic, "orders_avro", "avro"),
        &extra,
    )?;
    measure_sink(b, &run, "avro_sink", out).await?;
    run.stop();
    let rows = count(b, "orders_avro").await?;
    anyhow::ensure!(
        rows == b.distinct,
        "Avro sink wrote {rows} rows, expected {}",
        b.distinct
    );
    let same: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders_avro a JOIN orders_typed j USING (order_id) \
         WHERE (a.customer, a.amount, a.currency, a.status, a.version, a.ts) = \
               (j.customer, j.amount, j.currency, j.status, j.version, j.ts)",
    )
    .fetch_one(&b.pool)
    .await?;
    anyhow::ensure!(
        same as usize == b.distinct,
        "Avro and JSON tables differ ({same} equal rows)"
    );
    Ok(())
}

/// Phase 6b: scaling of the typed route: 1, 2 and 4 commit lanes (disjoint
/// partition sets committing on their own connections), and two sink
/// processes in one group against one process.
pub(crate) async fn scaling(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    for lanes in [1usize, 2, 4] {
        eprintln!("typed route with {lanes} commit lane(s)…");
        let table = format!("orders_lanes_{lanes}");
        b.exec(&format!("CREATE TABLE {table} {}", data::TYPED_DDL))
            .await?;
        let extra = format!(
            "commit_lanes = {lanes}\n[postgres]\nmax_connections = {}",
            lanes + 2
        );
        let run = start_sink(
            b,
            &format!("lanes{lanes}"),
            &b.typed_route(&b.topic, &table, "json"),
            &extra,
        )?;
        measure_sink(b, &run, &format!("typed_lanes_{lanes}"), out).await?;
        run.stop();
        anyhow::ensure!(
            count(b, &table).await? == b.distinct,
            "{table} is not exact"
        );
    }
    eprintln!("typed route on two sink processes in one group…");
    b.exec(&format!("CREATE TABLE orders_two {}", data::TYPED_DDL))
        .await?;
    let route = b.typed_route(&b.topic, "orders_two", "json");
    let first = start_sink(b, "two", &route, "")?;
    let (cfg, _) = b.config(&route, "", &first.group, 0)?;
    let second_path = first._dir.path().join("second.toml");
    std::fs::write(&second_path, cfg.to_toml())?;
    let mut second = std::process::Command::new(&b.sink_bin)
        .arg("--config")
        .arg(&second_path)
        .arg("run")
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    b.wait_stored(&first.group, first.started, "two replicas")
        .await?;
    out.insert(
        "typed_two_processes_events_per_s",
        json!(b.n as f64 / first.started.elapsed().as_secs_f64()),
    );
    first.stop();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(second.id().to_string())
        .status();
    let _ = second.wait();
    anyhow::ensure!(
        count(b, "orders_two").await? == b.distinct,
        "orders_two is not exact"
    );
    Ok(())
}

/// Phase 7: naive at-least-once consumer: one upsert transaction per
/// message plus an async Kafka commit.
pub(crate) async fn naive(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    let naive_n = env_usize("BENCH_NAIVE_EVENTS", 20_000).min(b.n);
    eprintln!("running the naive consumer on {naive_n} events…");
    b.route_for(&b.document_route("naive")).await?;
    let consumer = b.consumer(&format!("bench-naive-{}", b.stamp))?;
    consumer.assign(&b.whole_topic()?)?;
    let mut conn = PgConnection::connect(&b.url).await?;
    let t = Instant::now();
    let mut done = 0usize;
    while done < naive_n {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let payload = std::str::from_utf8(m.payload().unwrap_or_default())?.to_string();
        let v: Value = serde_json::from_str(&payload)?;
        sqlx::query(
            "INSERT INTO naive AS t (key, event_hash, payload, kafka_topic, kafka_partition, kafka_offset) \
             VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (key) DO UPDATE SET event_hash = EXCLUDED.event_hash, \
             payload = EXCLUDED.payload WHERE t.event_hash IS DISTINCT FROM EXCLUDED.event_hash",
        )
        .bind(v["order_id"].as_str().unwrap_or_default())
        .bind(hash::hash_value(&v).0.to_vec())
        .bind(&payload)
        .bind(m.topic())
        .bind(m.partition())
        .bind(m.offset())
        .execute(&mut conn)
        .await?;
        let mut c = TopicPartitionList::new();
        c.add_partition_offset(
            m.topic(),
            m.partition(),
            rdkafka::Offset::Offset(m.offset() + 1),
        )?;
        consumer.commit(&c, rdkafka::consumer::CommitMode::Async)?;
        done += 1;
    }
    out.insert("naive_events", json!(naive_n));
    out.insert(
        "naive_events_per_s",
        json!(naive_n as f64 / t.elapsed().as_secs_f64()),
    );
    Ok(())
}
