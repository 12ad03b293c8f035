//! What `verify` found, as text or JSON, and its progress on a terminal.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::store::compare::{Comparison, Sample};

/// One partition's verified range: `[from, to)`, `to` being the stored
/// position of the snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    /// The group's stored position at the snapshot (`None`: never committed).
    pub stored: Option<i64>,
    pub log_start: i64,
    pub log_end: i64,
}

/// `complete`: every partition was read from offset 0, so the expected table
/// is the fold of the whole log and every row is accounted for. `partial`:
/// the range was applied on top of the table's rows (positions not
/// compared); rows of keys outside the range are not checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Complete,
    Partial,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteReport {
    pub table: String,
    pub topic: String,
    pub mode: Mode,
    pub compared_columns: Vec<String>,
    pub partitions: Vec<PartitionRange>,
    pub equal: bool,
    #[serde(flatten)]
    pub comparison: Comparison,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// True only when every route's table equals the log's result.
    pub ok: bool,
    pub group: String,
    /// When the snapshot of positions and table was taken (database clock).
    pub snapshot_at: String,
    pub messages_read: u64,
    /// Messages the fold could not apply (as the sink would dead-letter them).
    pub dead_letters: u64,
    /// Postgres changes streamed below their partition's snapshot point
    /// (a transaction open across the slot's creation; docs/cdc.md). Without
    /// whole source transactions the sink and this fold both refuse them
    /// where a row holds its snapshot value: the table can equal the log
    /// and still differ from the source.
    pub snapshot_straddles: u64,
    pub seconds: f64,
    pub routes: Vec<RouteReport>,
}

impl VerifyReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        for r in &self.routes {
            render_route(&mut s, r, &self.group);
        }
        if self.snapshot_straddles > 0 {
            let _ = writeln!(
                s,
                "WARNING: {} change(s) streamed below their partition's snapshot point (a transaction \
                 open across the replication slot's creation): the sink refused them where a row held \
                 its snapshot value, and so does this fold. The table can differ from the source; turn \
                 on [sink.source_transactions] and replay (docs/cdc.md, \"What is not covered\")",
                self.snapshot_straddles
            );
        }
        let _ = writeln!(
            s,
            "read {} message(s) ({} dead letter(s)) in {:.1} s; snapshot at {}\n{}",
            self.messages_read,
            self.dead_letters,
            self.seconds,
            self.snapshot_at,
            if self.ok {
                "RESULT: every table equals the log up to the stored positions"
            } else {
                "RESULT: DIFFERENT"
            }
        );
        s
    }
}

fn render_route(s: &mut String, r: &RouteReport, group: &str) {
    let c = &r.comparison;
    let mode = match r.mode {
        Mode::Complete => "complete (the whole log)",
        Mode::Partial => "partial (rows of keys outside the range are not checked)",
    };
    let _ = writeln!(s, "table {} (topic {}, group {group})", r.table, r.topic);
    let _ = writeln!(s, "  range: {mode}");
    for p in &r.partitions {
        let stored = p.stored.map_or("-".into(), |o| o.to_string());
        let _ = writeln!(
            s,
            "    {}[{}] [{}, {}) stored {stored}, log [{}, {})",
            p.topic, p.partition, p.from, p.to, p.log_start, p.log_end
        );
    }
    let _ = writeln!(s, "  compared: {}", r.compared_columns.join(", "));
    let checked = match c.keys_in_range {
        Some(n) => format!("; {n} key(s) in the range checked"),
        None => String::new(),
    };
    let _ = writeln!(
        s,
        "  rows: table {}, expected {}{checked}",
        c.rows_table, c.rows_expected
    );
    for (what, n, samples) in [
        ("missing", c.missing, &c.samples_missing),
        ("extra", c.extra, &c.samples_extra),
        ("different", c.different, &c.samples_different),
    ] {
        let _ = writeln!(s, "  {what:<9} {n}{}", sample_text(samples));
    }
    let _ = writeln!(
        s,
        "  checksum: table {} expected {}\n  {}",
        c.checksum_table,
        c.checksum_expected,
        if r.equal { "EQUAL" } else { "DIFFERENT" }
    );
}

fn sample_text(samples: &[Sample]) -> String {
    if samples.is_empty() {
        return String::new();
    }
    let keys: Vec<String> = samples
        .iter()
        .map(|x| {
            if x.columns.is_empty() {
                x.key.clone()
            } else {
                format!("{} ({})", x.key, x.columns.join(", "))
            }
        })
        .collect();
    format!("  e.g. {}", keys.join("; "))
}

/// Prints `done / total` offsets on stderr every 250 ms until `stop`, when
/// stderr is a terminal (logs and pipes get the final report only).
pub fn spawn_progress(
    label: String,
    done: Arc<AtomicI64>,
    total: i64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let d = done.load(Ordering::Relaxed);
            let pct = if total > 0 { d * 100 / total } else { 100 };
            let bar: String = (0..30)
                .map(|i| if i * 100 / 30 < pct { '#' } else { '.' })
                .collect();
            eprint!("\r{label} [{bar}] {d}/{total} offsets ({pct}%)");
            let _ = std::io::stderr().flush();
        }
        eprintln!();
    })
}
