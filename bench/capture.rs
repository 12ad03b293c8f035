//! Phase 10 (`capture`): a whole database replicated from a Debezium
//! snapshot with one route, kafka-pg-sink against the Debezium JDBC sink on
//! the same topics, in the same run.
//!
//! A source database on the CDC cluster (scripts/connect.sh source-db:
//! port 5433) gets 20 tables of mixed types — one with a composite key, one
//! of `BENCH_CAPTURE_ROWS` rows (300,000) — and the Debezium Postgres source
//! (JSON with schemas, `column.propagate.source.type=.*`) snapshots it into
//! one topic per table, once, untimed. Then, timed from nothing:
//!
//! * kafka-pg-sink, the release binary, with the one-route configuration of
//!   docs/cdc.md (`topic = "^<prefix>\\..*"`, `table =
//!   "replica.${source.table}"`, `create_table`, `evolve`): from its start
//!   until its stored positions (`sink_offsets`, a cheap probe) reach every
//!   topic's end offset — tables created from the events included;
//! * with `BENCH_PEERS=1`, the Debezium JDBC sink configured for a capture
//!   (bench/peer-debezium-capture.sh: `topics.regex`,
//!   `collection.name.format=${source.table}`, `schema.evolution=basic`,
//!   upsert, record keys, deletes; 4 tasks, batches of 5000) into another
//!   database: from every task RUNNING until its committed offsets reach
//!   the same end offsets (the JVM's start is recorded apart, as in the
//!   peers phase).
//!
//! Both targets must then hold, table by table, as many rows as the source,
//! or the phase fails.

use crate::*;

/// Tables beside `big` and `order_lines`.
const SMALL_TABLES: usize = 18;
const SMALL_ROWS: i64 = 2_000;
const LINE_ROWS: i64 = 5_000;
/// Columns per small table, taken in rotation from [`COLUMN_TYPES`].
const SMALL_COLUMNS: usize = 5;

/// Column types of the small tables: (SQL type, value for row `g`). Types
/// both sinks write (the Debezium JDBC sink cannot write numeric or
/// timestamptz arrays, points, or `24:00:00`: docs/cdc-type-fidelity.md).
const COLUMN_TYPES: [(&str, &str); 22] = [
    ("smallint", "(g % 30000)::smallint"),
    ("bigint", "g * 1000003"),
    ("real", "g / 7.0"),
    ("double precision", "g / 3.0"),
    ("numeric(10,2)", "round(g * 1.25, 2)"),
    ("numeric(18,6)", "g / 7.0"),
    ("numeric", "g::numeric / 7"),
    ("varchar(40)", "'name ' || g"),
    ("char(8)", "lpad((g % 100000)::text, 8, 'c')"),
    ("text", "md5(g::text)"),
    ("boolean", "g % 2 = 0"),
    ("date", "date '2020-01-01' + (g % 2000)::int"),
    (
        "timestamp(3)",
        "timestamp '2020-01-01' + g * interval '1.234 second'",
    ),
    (
        "timestamptz",
        "timestamptz '2020-01-01 00:00+00' + g * interval '1 minute'",
    ),
    ("time", "time '00:00' + (g % 86000) * interval '1 second'"),
    ("uuid", "md5(g::text)::uuid"),
    ("jsonb", "jsonb_build_object('g', g, 'tag', 'x' || g % 10)"),
    ("json", "json_build_object('g', g)"),
    ("bytea", "decode(md5(g::text), 'hex')"),
    ("int[]", "ARRAY[g::int, g::int + 1]"),
    ("text[]", "ARRAY['a' || g, 'b']"),
    (
        "inet",
        "('10.0.' || (g / 256 % 256) || '.' || (g % 256))::inet",
    ),
];

/// The source database and its capture.
struct Source {
    admin_url: String,
    name: String,
    prefix: String,
    /// (table, rows).
    tables: Vec<(String, i64)>,
    total: i64,
}

impl Source {
    fn topics(&self) -> Vec<String> {
        self.tables
            .iter()
            .map(|(t, _)| format!("{}.public.{t}", self.prefix))
            .collect()
    }
}

pub(crate) fn connect_sh(b: &Bench, args: &[&str]) -> anyhow::Result<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("bash")
        .arg(format!("{root}/scripts/connect.sh"))
        .args(args)
        .env("KAFKA_BROKERS", &b.brokers)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/connect.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The source tables: (name, DDL, rows, values of a row over `g`).
fn tables(big_rows: i64) -> Vec<(String, String, i64, String)> {
    let null_every_10th = |e: &str| format!("CASE WHEN g % 10 = 0 THEN NULL ELSE {e} END");
    let mut t = vec![
        (
            "big".to_string(),
            "(id bigint PRIMARY KEY, account int NOT NULL, amount numeric(12,2), \
             status varchar(12), created timestamptz, note text, flag boolean)"
                .to_string(),
            big_rows,
            "g, g % 1000, round(g * 0.37, 2), (ARRAY['new','paid','shipped'])[g % 3 + 1], \
             timestamptz '2024-01-01 00:00+00' + g * interval '1 second', 'row ' || g, g % 2 = 0"
                .to_string(),
        ),
        (
            "order_lines".to_string(),
            "(order_id int, line int, sku text NOT NULL, qty int, price numeric(10,2), \
             shipped date, PRIMARY KEY (order_id, line))"
                .to_string(),
            LINE_ROWS,
            "g / 4, g % 4, 'sku-' || g % 97, g % 7 + 1, round(g * 0.25, 2), \
             date '2025-01-01' + g % 300"
                .to_string(),
        ),
    ];
    for i in 0..SMALL_TABLES {
        let cols: Vec<(&str, &str)> = (0..SMALL_COLUMNS)
            .map(|j| COLUMN_TYPES[(i * SMALL_COLUMNS + j) % COLUMN_TYPES.len()])
            .collect();
        let ddl = cols
            .iter()
            .enumerate()
            .map(|(j, (ty, _))| format!(", c{j} {ty}"))
            .collect::<String>();
        let values = cols
            .iter()
            .map(|(_, e)| format!(", {}", null_every_10th(e)))
            .collect::<String>();
        t.push((
            format!("t{i:02}"),
            format!("(id int PRIMARY KEY{ddl})"),
            SMALL_ROWS,
            format!("g{values}"),
        ));
    }
    t
}

async fn create_source(b: &Bench) -> anyhow::Result<Source> {
    // bench/run.sh starts Postgres and the broker; the CDC cluster is this
    // phase's own (idempotent, quick when it runs).
    connect_sh(b, &["source-db", "ensure"])?;
    let admin_url = connect_sh(b, &["source-db", "url"])?.trim().to_string();
    let name = format!("kpgs_cap_{}", b.stamp.to_lowercase());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .context("the CDC source cluster (scripts/connect.sh source-db ensure)")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let mut url = url::Url::parse(&admin_url)?;
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let mut conn = PgConnection::connect(&url).await?;
    let big_rows = env_usize("BENCH_CAPTURE_ROWS", 300_000) as i64;
    let mut tabs = Vec::new();
    for (t, ddl, rows, values) in tables(big_rows) {
        sqlx::raw_sql(&format!(
            "CREATE TABLE {t} {ddl}; \
             INSERT INTO {t} SELECT {values} FROM generate_series(1, {rows}) g"
        ))
        .execute(&mut conn)
        .await
        .with_context(|| format!("source table {t}"))?;
        tabs.push((t, rows));
    }
    sqlx::raw_sql("ANALYZE").execute(&mut conn).await?;
    conn.close().await?;
    let total = tabs.iter().map(|(_, r)| r).sum();
    Ok(Source {
        admin_url,
        prefix: name.clone(),
        name,
        tables: tabs,
        total,
    })
}

/// Sum over `topics` of their end offsets (single-partition topics as
/// Debezium creates them here; a missing topic counts 0).
fn end_offsets(consumer: &BaseConsumer, topics: &[String]) -> i64 {
    topics
        .iter()
        .map(|t| {
            consumer
                .fetch_watermarks(t, 0, Duration::from_secs(5))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

/// Runs the Debezium Postgres source until its snapshot of every table is
/// in the topics (end offsets = the source's rows, and the connector's log
/// says the snapshot completed), then stops it and drops its slot.
/// Returns the seconds it took (for information).
async fn snapshot(b: &Bench, src: &Source) -> anyhow::Result<f64> {
    let name = format!("kpgs-capture-src-{}", b.stamp.to_lowercase());
    let props = connect_sh(
        b,
        &[
            "source-props",
            &name,
            "--db",
            &src.name,
            "--tables",
            "public\\..*",
            "--prefix",
            &src.prefix,
            "--schemas",
            "column.propagate.source.type=.*",
            // Debezium's default (source-props writes `string`): exact
            // decimals as Connect Decimal, which both sinks read.
            "decimal.handling.mode=precise",
            // Untimed production: smaller topics, same events.
            "producer.override.compression.type=lz4",
            "producer.override.linger.ms=20",
            "producer.override.batch.size=262144",
        ],
    )?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("source.properties");
    std::fs::write(&path, props)?;
    let t = Instant::now();
    connect_sh(b, &["start", &name, "-", path.to_str().unwrap()])?;
    let result = wait_snapshot(b, src, &name, t).await;
    let seconds = t.elapsed().as_secs_f64();
    if result.is_err() {
        // Kept for the post-mortem (`clean` removes the worker's state).
        if let Ok(log) = connect_sh(b, &["log", &name]) {
            let _ = std::fs::create_dir_all("/tmp/kafka-pg-sink-peer");
            let _ = std::fs::copy(log.trim(), format!("/tmp/kafka-pg-sink-peer/{name}.log"));
        }
    }
    let _ = connect_sh(b, &["clean", &name]);
    result.map(|()| seconds)
}

async fn wait_snapshot(b: &Bench, src: &Source, name: &str, t: Instant) -> anyhow::Result<()> {
    let log = connect_sh(b, &["log", name])?.trim().to_string();
    let topics = src.topics();
    loop {
        // A new client each time: one that asked for a topic before
        // Debezium created it keeps it unknown until its next metadata
        // refresh (minutes).
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b.brokers)
            .create()?;
        let ends = end_offsets(&consumer, &topics);
        drop(consumer);
        let done = std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("Snapshot completed") || l.contains("status=COMPLETED"));
        if done && ends >= src.total {
            anyhow::ensure!(
                ends == src.total,
                "the snapshot wrote {ends} events for {} rows",
                src.total
            );
            return Ok(());
        }
        let status = connect_sh(b, &["status", name]).unwrap_or_default();
        if status.contains("\"FAILED\"") || status.is_empty() {
            anyhow::bail!(
                "the Debezium source failed during the snapshot ({ends} of {} events); \
                 log: /tmp/kafka-pg-sink-peer/{name}.log; status: {status}",
                src.total
            );
        }
        if t.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "the Debezium snapshot did not complete in 600 s ({ends} of {} events); \
                 log: /tmp/kafka-pg-sink-peer/{name}.log",
                src.total
            );
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// The pid of the sink process this bench started last (a child named
/// kafka-pg-sink): `SinkRun` keeps its own.
fn sink_child_pid() -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            head.ends_with("(kafka-pg-sink")
                && rest.split_whitespace().nth(1) == Some(me.to_string().as_str())
        })
        .max()
}

/// Row counts of every table of `src` in `schema` of the database at `url`
/// that differ from the source's: (table, source rows, target rows or -1).
async fn row_differences(
    url: &str,
    schema: &str,
    src: &Source,
) -> anyhow::Result<Vec<(String, i64, i64)>> {
    let mut conn = PgConnection::connect(url).await?;
    let mut out = Vec::new();
    for (t, rows) in &src.tables {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.{t}"))
            .fetch_one(&mut conn)
            .await
            .unwrap_or(-1);
        if n != *rows {
            out.push((t.clone(), *rows, n));
        }
    }
    conn.close().await?;
    Ok(out)
}

/// (a) kafka-pg-sink from nothing until every topic's end offset is stored.
async fn capture_sink(b: &Bench, src: &Source, out: &mut Results) -> anyhow::Result<()> {
    eprintln!(
        "capture: kafka-pg-sink replicating {} tables ({} events), one route…",
        src.tables.len(),
        src.total
    );
    let route = format!(
        "topic = \"^{}\\\\..*\"\ntable = \"replica.${{source.table}}\"\nenvelope = \"debezium\"\n\
         create_table = true\nevolve = \"add_columns\"",
        src.prefix
    );
    let cpu = CpuMark::now(None);
    let t = Instant::now();
    let run = start_sink(b, "capture", &route, "")?;
    let group = format!("bench-capture-{}", b.stamp);
    let pid = sink_child_pid();
    loop {
        if b.stored_sum(&group).await >= src.total {
            break;
        }
        if t.elapsed() > Duration::from_secs(900) {
            let stored = b.stored_sum(&group).await;
            run.stop();
            anyhow::bail!(
                "capture: kafka-pg-sink stored {stored} of {} positions in 900 s",
                src.total
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = t.elapsed().as_secs_f64();
    record_cpu(out, "capture", &cpu, pid, "event", src.total as usize);
    if let Some(pid) = pid {
        let (rss, cpu_s) = proc_stats(pid);
        out.insert("capture_peak_rss_mb", json!(rss));
        out.insert("capture_cpu_seconds", json!(cpu_s));
    }
    let (batch, commit_ms) = phase_averages("", &run.metrics().await);
    run.stop();
    out.insert("capture_seconds", json!(seconds));
    out.insert("capture_events_per_s", json!(src.total as f64 / seconds));
    out.insert("capture_avg_batch", json!(batch));
    out.insert("capture_avg_commit_ms", json!(commit_ms));
    let diff = row_differences(&b.url, "replica", src).await?;
    anyhow::ensure!(
        diff.is_empty(),
        "capture: kafka-pg-sink's tables differ from the source (table, source rows, target rows): {diff:?}"
    );
    Ok(())
}

/// (b) the Debezium JDBC sink configured for a capture, same topics, its own
/// database.
async fn capture_peer(b: &Bench, src: &Source, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("capture: the Debezium JDBC sink on the same topics…");
    let db = format!("{}_dbz", b.db_name);
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&b.admin_url)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await?;
    let mut url = url::Url::parse(&b.admin_url)?;
    url.set_path(&format!("/{db}"));
    let url = url.to_string();
    let result = run_peer(b, src, &url, out).await;
    if std::env::var("BENCH_KEEP_DB").as_deref() != Ok("1") {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    admin.close().await;
    result
}

async fn run_peer(b: &Bench, src: &Source, url: &str, out: &mut Results) -> anyhow::Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    // 4 tasks and batches of 5000, as the peers phase's best configuration
    // — without its unnest insert, which binds Debezium's `io.debezium.time.Date`
    // (days) as text and fails ("invalid input syntax for type date: \"20190\"").
    // BENCH_CAPTURE_PEER_ARGS: the script's TASKS BATCH [KEY=VALUE…] instead.
    let args = std::env::var("BENCH_CAPTURE_PEER_ARGS").unwrap_or_else(|_| "4 5000".into());
    let st = std::process::Command::new("bash")
        .arg(format!("{root}/bench/peer-debezium-capture.sh"))
        .args([&format!("{}\\..*", src.prefix), url, "${source.table}"])
        .args(args.split_whitespace())
        .env("KAFKA_BROKERS", &b.brokers)
        .output()?;
    anyhow::ensure!(
        st.status.success(),
        "capture: the Debezium JDBC sink failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let line = String::from_utf8_lossy(&st.stdout);
    let peer: Value = serde_json::from_str(line.lines().last().unwrap_or("{}"))?;
    anyhow::ensure!(
        peer["messages"].as_i64() == Some(src.total),
        "capture: the peer saw {} messages, expected {}",
        peer["messages"],
        src.total
    );
    out.insert("capture_debezium_events_per_s", peer["msgs_per_s"].clone());
    out.insert(
        "capture_debezium_incl_startup_per_s",
        peer["incl_startup_per_s"].clone(),
    );
    out.insert("capture_debezium_startup_s", peer["startup_s"].clone());
    out.insert(
        "capture_debezium_worker_cpu_s",
        peer["worker_cpu_s"].clone(),
    );
    out.insert("capture_debezium_tasks", peer["tasks"].clone());
    out.insert("capture_debezium_batch", peer["batch"].clone());
    let diff = row_differences(url, "public", src).await?;
    anyhow::ensure!(
        diff.is_empty(),
        "capture: the Debezium JDBC sink's tables differ from the source (table, source rows, target rows): {diff:?}"
    );
    Ok(())
}

/// Drops the source database and deletes the capture's topics.
async fn clean(b: &Bench, src: &Source) -> anyhow::Result<()> {
    if std::env::var("BENCH_KEEP_DB").as_deref() == Ok("1") {
        return Ok(());
    }
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&src.admin_url)
        .await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        src.name
    ))
    .execute(&admin)
    .await?;
    admin.close().await;
    let ac: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &b.brokers)
        .create()?;
    let topics = src.topics();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    ac.delete_topics(&names, &AdminOptions::new()).await?;
    Ok(())
}

/// Phase 10: the capture. Records `capture_events_per_s` and, with
/// `BENCH_PEERS=1`, `capture_debezium_events_per_s`.
pub(crate) async fn capture(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("capture: creating the source database on the CDC cluster…");
    let src = create_source(b).await?;
    let result = async {
        eprintln!(
            "capture: Debezium snapshot of {} tables, {} rows (untimed)…",
            src.tables.len(),
            src.total
        );
        let snap_s = snapshot(b, &src).await?;
        out.insert("capture_snapshot_s", json!(snap_s));
        out.insert("capture_events", json!(src.total));
        out.insert("capture_tables", json!(src.tables.len()));
        capture_sink(b, &src, out).await?;
        if std::env::var("BENCH_PEERS").as_deref() == Ok("1") {
            capture_peer(b, &src, out).await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = clean(b, &src).await {
        eprintln!("capture: cleaning up: {e:#}");
    }
    result
}
