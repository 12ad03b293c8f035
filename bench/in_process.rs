//! The sink's write path in process: prepare and commit overlapped as the
//! pipeline overlaps them, the client-side cost alone, and the commits alone.

use crate::*;
use kafka_pg_sink::config::route_set::RouteSet;

/// Phase 2: write path in process (document route): prepare + commit
/// (offsets included), overlapped the way the pipeline overlaps them, and
/// the client-side cost alone (parse, hash, fold on one thread).
pub(crate) async fn write_path(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring the write path…");
    let route = b.route_for(&b.document_route("write_path")).await?;
    let batch_size = b.batch_size()?;
    let t = Instant::now();
    for chunk in b.msgs.chunks(batch_size) {
        std::hint::black_box(prepare(std::slice::from_ref(&route), chunk.to_vec()));
    }
    out.insert(
        "prepare_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    let writer = BatchWriter::new(
        b.pool.clone(),
        "bench-write-path",
        vec![route.clone()],
        OnError::DeadLetter,
    );
    let mut planned: BTreeMap<TopicPartition, Offset> = BTreeMap::new();
    let t = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let preparer = {
        let msgs = b.msgs.clone();
        std::thread::spawn(move || {
            for chunk in msgs.chunks(batch_size) {
                if tx
                    .blocking_send(prepare(std::slice::from_ref(&route), chunk.to_vec()))
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    while let Some(batch) = rx.recv().await {
        commit_next(&writer, &mut planned, &batch).await?;
    }
    preparer.join().expect("preparer thread");
    out.insert(
        "write_path_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// Commits `batch` with the fence a lone consumer of a new group uses:
/// each partition expected where the previous batch left it.
pub(crate) async fn commit_next(
    writer: &BatchWriter,
    planned: &mut BTreeMap<TopicPartition, Offset>,
    batch: &PreparedBatch,
) -> anyhow::Result<()> {
    let expected: Vec<Expected> = batch
        .ranges
        .iter()
        .map(|(tp, (_, last))| Expected {
            tp: tp.clone(),
            expected: planned.get(tp).copied(),
            new_next: last.next(),
        })
        .collect();
    match writer.commit(batch, &expected).await? {
        CommitOutcome::Committed(_) => {}
        other => anyhow::bail!("bench commit not applied: {other:?}"),
    }
    for e in expected {
        planned.insert(e.tp, e.new_next);
    }
    Ok(())
}

/// Phase 2b: the sink's commits alone, for the document and the typed
/// route: every batch of the topic prepared first (as the pipeline
/// prepares it, COPY text included), then committed on one connection with
/// the fence, nothing else running. Set beside the stream ceilings (the
/// ceilings' statements over the same batches), this separates what the
/// sink's SQL costs from what running beside Postgres and the broker on
/// the same cores costs: `<route>_commits_vs_stream_ceiling`.
pub(crate) async fn commits_alone(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring the sink's commits alone…");
    b.exec(&format!("CREATE TABLE commits_typed {}", data::TYPED_DDL))
        .await?;
    let routes = [
        ("document_commits", b.document_route("commits_document")),
        (
            "typed_commits",
            b.typed_route(&b.topic, "commits_typed", "json"),
        ),
    ];
    for (prefix, route) in routes {
        let route = b.route_for(&route).await?;
        let routes = std::sync::Arc::new(RouteSet::new(vec![route.clone()]));
        let batches: Vec<PreparedBatch> = b
            .msgs
            .chunks(b.batch_size()?)
            .map(|chunk| {
                prepare_for_commit(
                    &routes,
                    chunk.to_vec(),
                    &SchemaSet::default(),
                    &[false],
                    None,
                )
            })
            .collect();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&b.url)
            .await?;
        let group = format!("bench-{prefix}");
        let writer = BatchWriter::new(pool.clone(), &group, vec![route], OnError::DeadLetter);
        let mut planned = BTreeMap::new();
        let cpu = CpuMark::now(None);
        let t = Instant::now();
        for batch in &batches {
            commit_next(&writer, &mut planned, batch).await?;
        }
        out.insert(
            prefixed(prefix, "events_per_s"),
            json!(b.n as f64 / t.elapsed().as_secs_f64()),
        );
        record_cpu(out, prefix, &cpu, None, "event", b.n);
        pool.close().await;
    }
    Ok(())
}
