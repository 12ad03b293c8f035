//! Phase `citus`: the typed route into a table distributed over a Citus
//! coordinator and two workers (scripts/citus.sh), beside the same route
//! into one Postgres (`typed`, the same run). Every node runs on this
//! machine's cores with the sink and the broker, so the ratio is the cost
//! of distribution (the extra hop, the two-phase commit), not its gain:
//! docs/scaling.md projects it.

use crate::*;

const NODES: [&str; 3] = ["coordinator", "worker1", "worker2"];

/// CPU seconds so far of each Citus node: its postmaster (with the time of
/// exited backends) and its live backends.
fn node_cpu() -> [f64; 3] {
    let state =
        std::env::var("CITUS_STATE_DIR").unwrap_or_else(|_| "/tmp/kafka-pg-sink-citus".into());
    let mut postmasters = [0u32; 3];
    let mut cpu = [0.0; 3];
    let procs: Vec<(u32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            Some((
                pid,
                std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
            ))
        })
        .collect();
    for (pid, _) in &procs {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        for (i, node) in NODES.iter().enumerate() {
            if cmd.contains(&format!("-D {state}/{node}")) {
                postmasters[i] = *pid;
            }
        }
    }
    for (pid, stat) in &procs {
        let Some((head, [utime, stime, cutime, cstime])) = cpu_times(stat) else {
            continue;
        };
        // After the command: state, then the parent's pid.
        let ppid: u32 = stat[head.len() + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        for (i, pm) in postmasters.iter().enumerate() {
            if *pm != 0 && *pid == *pm {
                cpu[i] += utime + stime + cutime + cstime;
            } else if *pm != 0 && ppid == *pm {
                cpu[i] += utime + stime;
            }
        }
    }
    cpu
}

fn citus_sh(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("bash")
        .arg("scripts/citus.sh")
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "citus.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) async fn citus(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("running kafka-pg-sink into a Citus distributed table (coordinator + 2 workers)…");
    citus_sh(&["ensure"])?;
    let name = format!("kpgs_bench_citus_{}", b.stamp.to_lowercase());
    // Citus's self-signed certificate is X.509 v1, which rustls refuses.
    let url = format!("{}?sslmode=disable", citus_sh(&["createdb", &name])?);
    let result = measure(b, &url, out).await;
    if std::env::var("BENCH_KEEP_DB").is_err() {
        citus_sh(&["dropdb", &name])?;
    }
    result
}

async fn measure(b: &Bench, url: &str, out: &mut Results) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE orders_typed {}; SELECT create_distributed_table('orders_typed', 'order_id')",
        data::TYPED_DDL
    ))
    .execute(&pool)
    .await?;
    let before = node_cpu();
    let run = start_sink_on(
        b,
        url,
        "citus",
        &b.typed_route(&b.topic, "orders_typed", "json"),
        "",
    )?;
    // Positions live on the coordinator: poll them there.
    let group = run.group.clone();
    loop {
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT sum(next_offset)::bigint FROM sink_offsets WHERE consumer_group = $1",
        )
        .bind(&group)
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten();
        if stored.unwrap_or(0) >= b.n as i64 {
            break;
        }
        anyhow::ensure!(
            run.started.elapsed() < Duration::from_secs(3600),
            "the Citus run did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = run.started.elapsed().as_secs_f64();
    record_phase(b, &run, "citus_sink", seconds, "", &run.cpu_start, out).await;
    let after = node_cpu();
    for (i, node) in NODES.iter().enumerate() {
        out.insert(
            prefixed("citus", &format!("{node}_cpu_us_per_event")),
            json!((after[i] - before[i]) * 1e6 / b.n as f64),
        );
    }
    run.stop();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders_typed")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        rows as usize == b.distinct,
        "the Citus run wrote {rows} rows, expected {}",
        b.distinct
    );
    pool.close().await;
    Ok(())
}
