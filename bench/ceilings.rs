//! Ceilings: what one Postgres backend and the broker take alone, with
//! nothing else running — the denominators of the run's ratios.

use crate::*;
use kafka_pg_sink::store::dialect::Dialect;

/// Phase 1a: document-table ceilings, one backend, the distinct final rows.
///
/// `ceiling_rows_per_s` is defined like the typed ceiling: COPY (payload as
/// text; rows in key order, as the sink's fold leaves them and as the typed
/// ceiling's are) into a temporary table, then one INSERT … SELECT … ON CONFLICT
/// parsing the jsonb, as the sink's statement does, timed together.
/// `dup_filtered_ceiling_rows_per_s` is the sink's own duplicate pre-filter
/// statement for a versioned route (keys, hashes and versions bound as
/// arrays, one probe per row) over every row already stored, in the sink's
/// batch size: what a replay asks of Postgres; `replay_stream_ceiling_events_per_s`
/// the same over the whole event stream. For reference, the earlier definitions with the rows staged
/// server side before the clock starts (no data crosses the wire): the
/// upsert into the empty table, again (all duplicates), and a server-side
/// anti-join as the pre-filter. Last, COPY into the table itself.
pub(crate) async fn document_ceilings(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring Postgres ceilings (document table)…");
    let route = b.route_for(&b.document_route("ceiling")).await?;
    let staged = prepare(std::slice::from_ref(&route), b.msgs.clone());
    let rows = &staged.writes[0].upserts;
    let copy_text: String = rows.iter().map(copy_line).collect();
    let mut conn = PgConnection::connect(&b.url).await?;
    sqlx::raw_sql("CREATE UNLOGGED TABLE staging (LIKE ceiling); ALTER TABLE staging ALTER COLUMN payload TYPE text")
        .execute(&mut conn)
        .await?;
    copy(&mut conn, "COPY staging FROM STDIN", &copy_text).await?;
    sqlx::query("ANALYZE staging").execute(&mut conn).await?;
    let upsert_sql = "INSERT INTO ceiling AS t SELECT key, event_hash, payload::jsonb, version, kafka_topic, \
        kafka_partition, kafka_offset FROM staging ON CONFLICT (key) DO UPDATE SET \
        event_hash = EXCLUDED.event_hash, payload = EXCLUDED.payload, kafka_offset = EXCLUDED.kafka_offset \
        WHERE t.event_hash IS DISTINCT FROM EXCLUDED.event_hash";
    let antijoin_sql = upsert_sql.replace(
        "FROM staging ON CONFLICT",
        "FROM staging s WHERE NOT EXISTS (SELECT 1 FROM ceiling c \
         WHERE c.key = s.key AND c.event_hash = s.event_hash) ON CONFLICT",
    );
    let per_s = |t: Instant| rows.len() as f64 / t.elapsed().as_secs_f64();
    for (name, sql) in [
        ("prestaged_ceiling_rows_per_s", upsert_sql),
        ("dup_ceiling_rows_per_s", upsert_sql),
        ("dup_antijoin_ceiling_rows_per_s", antijoin_sql.as_str()),
    ] {
        let t = Instant::now();
        sqlx::query(sql).execute(&mut conn).await?;
        out.insert(name, json!(per_s(t)));
    }
    prefilter_ceilings(b, &mut conn, &route, rows, out).await?;
    sqlx::query("TRUNCATE ceiling").execute(&mut conn).await?;
    let cpu = CpuMark::now(None);
    let t = Instant::now();
    let mut tx = conn.begin().await?;
    sqlx::query("CREATE TEMP TABLE stage (LIKE staging) ON COMMIT DROP")
        .execute(&mut *tx)
        .await?;
    copy(&mut tx, "COPY stage FROM STDIN", &copy_text).await?;
    sqlx::query(&upsert_sql.replace("FROM staging", "FROM stage"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    out.insert("ceiling_rows_per_s", json!(per_s(t)));
    record_cpu(out, "ceiling", &cpu, None, "row", rows.len());
    sqlx::query("TRUNCATE ceiling").execute(&mut conn).await?;
    let stream = StreamCeiling {
        name: "stream_ceiling_events_per_s",
        route: route.clone(),
        line: copy_line,
        stage: "CREATE TEMP TABLE stage (LIKE staging) ON COMMIT DROP",
        copy: "COPY stage FROM STDIN",
        upsert: &upsert_sql.replace("FROM staging", "FROM stage"),
    };
    stream_ceiling(b, &mut conn, stream, out).await?;
    sqlx::query("TRUNCATE ceiling").execute(&mut conn).await?;
    let t = Instant::now();
    copy(&mut conn, "COPY ceiling FROM STDIN", &copy_text).await?;
    out.insert("copy_rows_per_s", json!(per_s(t)));
    Ok(())
}

/// The duplicate ceilings of a replay: the sink's own pre-filter statement
/// for a versioned route (`dup_filtered_ceiling_rows_per_s`) over `rows`,
/// all stored, in the sink's batch size; then the same statement over the
/// whole event stream (`replay_stream_ceiling_events_per_s`).
pub(crate) async fn prefilter_ceilings(
    b: &Bench,
    conn: &mut PgConnection,
    route: &Route,
    rows: &[RowUpsert],
    out: &mut Results,
) -> anyhow::Result<()> {
    // The sink's own statement, as it sends it for a versioned route.
    let mut versioned = route.clone();
    versioned.version = Some("/version".into());
    versioned.version_pointer = Some(kafka_pg_sink::json::pointer::JsonPointer::parse("/version"));
    let cpu = CpuMark::now(None);
    let per_s = filtered_pass(b, conn, &versioned, rows).await?;
    out.insert("dup_filtered_ceiling_rows_per_s", json!(per_s));
    record_cpu(out, "dup_filtered_ceiling", &cpu, None, "row", rows.len());
    // The same statement over the whole event stream, in the sink's batches
    // folded as the sink folds them: what a replay of this topic asks of
    // Postgres (re-sends and older versions in other batches are probed
    // too, and the older versions come back as rows).
    let batches = stream_rows(b, &versioned)?;
    // Every stored key is in the stream: fewer rows means events were
    // refused (a route the fold cannot read) and the loop would time nothing.
    let probed: usize = batches.iter().map(Vec::len).sum();
    anyhow::ensure!(
        probed >= rows.len(),
        "the event stream folded to {probed} rows, fewer than the {} stored",
        rows.len()
    );
    let t = Instant::now();
    for batch in &batches {
        prefilter(conn, &versioned, batch, Dialect::Postgres).await?;
    }
    out.insert(
        "replay_stream_ceiling_events_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// The sink's pre-filter statement over `rows`, every one stored, in the
/// sink's batch size on one backend: rows per second. Fails if it keeps a
/// row (the loop would then not time what it claims).
pub(crate) async fn filtered_pass(
    b: &Bench,
    conn: &mut PgConnection,
    route: &Route,
    rows: &[RowUpsert],
) -> anyhow::Result<f64> {
    let batch_size = b.batch_size()?;
    let t = Instant::now();
    for chunk in rows.chunks(batch_size) {
        let kept = prefilter(conn, route, chunk, Dialect::Postgres)
            .await?
            .len();
        anyhow::ensure!(kept == 0, "the pre-filter kept {kept} stored rows");
    }
    Ok(rows.len() as f64 / t.elapsed().as_secs_f64())
}

/// The topic's whole event stream in the sink's batches, each folded on
/// `route` as the sink folds it: the rows each batch sends Postgres
/// (superseded states first, as the sink writes them).
pub(crate) fn stream_rows(b: &Bench, route: &Route) -> anyhow::Result<Vec<Vec<RowUpsert>>> {
    Ok(b.msgs
        .chunks(b.batch_size()?)
        .map(|chunk| {
            let mut batch = prepare(std::slice::from_ref(route), chunk.to_vec());
            let w = &mut batch.writes[0];
            let mut rows = std::mem::take(&mut w.previous);
            rows.append(&mut w.upserts);
            rows
        })
        .collect())
}

/// A ceiling's statement applied to the topic's whole event stream rather
/// than its distinct final rows: each batch of the sink's size folded as
/// the sink folds it (not timed), then COPY-staged (`stage` is the CREATE
/// of the temporary table `stage`, `copy` the COPY into it) and upserted
/// (`upsert`) in its own transaction. The database's share of a route:
/// re-sends and versions that land in different batches reach Postgres as
/// rows here too, as they do from the sink. Recorded as `<name>` in
/// events/s.
pub(crate) struct StreamCeiling<'a> {
    name: &'static str,
    route: Route,
    line: fn(&RowUpsert) -> String,
    stage: &'a str,
    copy: &'a str,
    upsert: &'a str,
}

pub(crate) async fn stream_ceiling(
    b: &Bench,
    conn: &mut PgConnection,
    c: StreamCeiling<'_>,
    out: &mut Results,
) -> anyhow::Result<()> {
    let batches: Vec<String> = stream_rows(b, &c.route)?
        .iter()
        .map(|rows| rows.iter().map(c.line).collect())
        .collect();
    let t = Instant::now();
    for text in &batches {
        let mut tx = conn.begin().await?;
        sqlx::query(c.stage).execute(&mut *tx).await?;
        copy(&mut tx, c.copy, text).await?;
        sqlx::query(c.upsert).execute(&mut *tx).await?;
        tx.commit().await?;
    }
    out.insert(c.name, json!(b.n as f64 / t.elapsed().as_secs_f64()));
    Ok(())
}

/// A document row as a line of the ceilings' COPY text.
pub(crate) fn copy_line(r: &RowUpsert) -> String {
    format!(
        "{}\t\\\\x{}\t{}\t\\N\t{}\t{}\t{}\n",
        r.key.0,
        hex::encode(r.hash.0),
        r.payload,
        r.tp.topic,
        r.tp.partition,
        r.offset.0
    )
}

/// Phase 1b: typed-table ceilings, one backend, the distinct final rows:
/// COPY into the table with its primary key, and COPY into a temporary
/// table then one INSERT … SELECT … ON CONFLICT DO UPDATE (what the sink's
/// staged statement does at best).
pub(crate) async fn typed_ceilings(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring Postgres ceilings (typed table)…");
    let rows = b.final_orders();
    let mut text = String::with_capacity(rows.len() * 80);
    for o in &rows {
        let v: Value = serde_json::from_str(&o.json)?;
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            o.key,
            o.customer,
            v["amount"],
            o.currency,
            o.status,
            o.version,
            v["ts"].as_str().unwrap_or_default()
        ));
    }
    b.exec(&format!(
        "CREATE TABLE typed_copy {0}; CREATE TABLE typed_ceiling {0}",
        data::TYPED_DDL
    ))
    .await?;
    let mut conn = PgConnection::connect(&b.url).await?;
    let per_s = |t: Instant| rows.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    copy(&mut conn, "COPY typed_copy FROM STDIN", &text).await?;
    out.insert("typed_copy_rows_per_s", json!(per_s(t)));
    let cpu = CpuMark::now(None);
    let t = Instant::now();
    let mut tx = conn.begin().await?;
    sqlx::query("CREATE TEMP TABLE stage (LIKE typed_ceiling) ON COMMIT DROP")
        .execute(&mut *tx)
        .await?;
    copy(&mut tx, "COPY stage FROM STDIN", &text).await?;
    sqlx::query(&typed_upsert_sql("typed_ceiling"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    out.insert("typed_ceiling_rows_per_s", json!(per_s(t)));
    record_cpu(out, "typed_ceiling", &cpu, None, "row", rows.len());
    b.exec(&format!("CREATE TABLE typed_stream {}", data::TYPED_DDL))
        .await?;
    let route = b
        .route_for(&b.typed_route(&b.topic, "typed_stream", "json"))
        .await?;
    // The route's columns, in the order of its COPY lines.
    let columns = route
        .columns
        .as_ref()
        .expect("a typed route")
        .columns
        .iter();
    let columns: Vec<String> = columns.map(|c| c.quoted()).collect();
    let stream = StreamCeiling {
        name: "typed_stream_ceiling_events_per_s",
        route,
        line: |r| format!("{}\n", r.row.as_deref().unwrap_or_default()),
        stage: "CREATE TEMP TABLE stage (LIKE typed_stream) ON COMMIT DROP",
        copy: &format!("COPY stage ({}) FROM STDIN", columns.join(", ")),
        upsert: &typed_upsert_sql("typed_stream"),
    };
    stream_ceiling(b, &mut conn, stream, out).await?;
    Ok(())
}

/// The typed ceilings' upsert of the staged rows into `table`.
pub(crate) fn typed_upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} AS t SELECT * FROM stage ON CONFLICT (order_id) DO UPDATE SET \
         customer = EXCLUDED.customer, amount = EXCLUDED.amount, currency = EXCLUDED.currency, \
         status = EXCLUDED.status, version = EXCLUDED.version, ts = EXCLUDED.ts \
         WHERE (t.customer, t.amount, t.currency, t.status, t.version, t.ts) IS DISTINCT FROM \
               (EXCLUDED.customer, EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.status, EXCLUDED.version, EXCLUDED.ts)"
    )
}

/// Phase 1c: broker read ceiling: a plain consumer with the sink's settings.
pub(crate) fn broker_ceiling(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring broker read ceiling…");
    let consumer = b.consumer(&format!("bench-read-{}", b.stamp))?;
    consumer.assign(&b.whole_topic()?)?;
    let t = Instant::now();
    let mut read = 0usize;
    while read < b.n {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
        }
        if t.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("broker read stalled at {read}/{}", b.n);
        }
    }
    out.insert(
        "broker_read_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    Ok(())
}
