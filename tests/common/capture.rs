//! Real Debezium sources for the change-data-capture tests: a Kafka Connect
//! worker per connector (scripts/connect.sh), the capture's topics, and the
//! sink's position on them.

use std::process::Command;
use std::time::Duration;

use super::{admin, brokers, end_offsets, sink_binary, unique, wait_until, TestDb};

/// `scripts/connect.sh ARGS`; its stdout, or a panic with its output.
pub fn connect_sh(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(format!("{}/scripts/connect.sh", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .env("KAFKA_BROKERS", brokers())
        .output()
        .expect("scripts/connect.sh");
    assert!(
        out.status.success(),
        "connect.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one route that replicates a capture (docs/cdc.md): every topic
/// under `prefix` (a TOML-escaped regex, `^{prefix}\\..*`) into
/// `replica.<source table>`, each table created from the events' schemas;
/// `extra` adds lines (`evolve`, `format`).
pub fn whole_database_route(prefix: &str, extra: &str) -> String {
    format!(
        "[[route]]\ntopic = \"^{prefix}\\\\..*\"\ntable = \"replica.${{source.table}}\"\n\
         envelope = \"debezium\"\ncreate_table = true\n{extra}"
    )
}

/// A fresh database on the CDC source cluster (wal_level = logical),
/// dropped afterwards.
pub async fn source_db() -> TestDb {
    TestDb::on(connect_sh(&["source-db", "url"]).trim()).await
}

/// A worker running one source connector; cleaned on drop.
pub struct Connector {
    pub name: String,
    props: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Connector {
    /// Starts a connector whose properties `connect.sh <props_cmd> NAME
    /// ARGS…` prints (`source-props`, `mysql-source-props`).
    pub fn start(props_cmd: &str, args: &[&str]) -> Connector {
        let name = unique("kpgs_dbz");
        let mut all = vec![props_cmd, name.as_str()];
        all.extend_from_slice(args);
        let props = connect_sh(&all);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("source.properties");
        std::fs::write(&path, props).unwrap();
        let c = Connector {
            name,
            props: path,
            _dir: dir,
        };
        c.run();
        c
    }

    /// Starts the worker again (after `kill9`): it resumes from its last
    /// flushed offset.
    pub fn run(&self) {
        connect_sh(&["start", &self.name, "-", self.props.to_str().unwrap()]);
    }

    /// Starts the worker again after `kill9` and waits until its connector
    /// decided how to go on, which must be from its flushed offset (Debezium
    /// logs the snapshot SKIPPED). A new snapshot would leave the rows the
    /// source deleted meanwhile in the target: no event tells a sink of them
    /// (docs/cdc.md, "A connector that re-snapshots").
    pub async fn restart(&self, timeout: Duration) {
        self.run();
        let log = self.log_path();
        let mut status = None;
        wait_until(
            timeout,
            "the restarted connector to decide on a snapshot",
            || {
                status = last_start_snapshot_status(&log);
                std::future::ready(status.is_some())
            },
        )
        .await;
        let status = status.unwrap_or_default();
        assert_eq!(
            status,
            "SKIPPED",
            "the restarted connector snapshotted again (status {status}): it found no offsets \
             in its offsets file, so the deletes between its snapshots reach no sink\n{}",
            self.log_tail(80)
        );
    }

    pub fn kill9(&self) {
        connect_sh(&["kill", &self.name]);
    }

    /// Waits until the worker flushed an offset holding `marker` (a key only
    /// streaming offsets have: Postgres `lsn_proc`, MySQL `event`).
    pub async fn wait_offset_with(&self, marker: &str, timeout: Duration) {
        let offsets = self.log_path().with_file_name("offsets.dat");
        let marker = marker.as_bytes().to_vec();
        wait_until(timeout, "the connector to flush a streaming offset", || {
            let (offsets, marker) = (offsets.clone(), marker.clone());
            async move {
                std::fs::read(&offsets)
                    .map(|b| b.windows(marker.len()).any(|w| w == marker))
                    .unwrap_or(false)
            }
        })
        .await;
    }

    /// The worker's log; its state dir holds the offsets file beside it.
    fn log_path(&self) -> std::path::PathBuf {
        connect_sh(&["log", &self.name]).trim().into()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("({e})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(format!("{}/scripts/connect.sh", env!("CARGO_MANIFEST_DIR")))
            .args(["clean", &self.name])
            .output();
    }
}

/// How the worker's last start ended its snapshot, from its log:
/// `SKIPPED` (it resumed from its offset) or `COMPLETED` (it snapshotted).
fn last_start_snapshot_status(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let this_start = text.rsplit("==== start").next()?;
    let rest = this_start
        .split("Snapshot ended with SnapshotResult [status=")
        .nth(1)?;
    Some(rest.split(',').next().unwrap_or_default().to_string())
}

/// The topics of the capture `prefix` that exist now.
pub fn capture_topics(prefix: &str) -> Vec<String> {
    let md = admin()
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    md.topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(&format!("{prefix}.")))
        .collect()
}

/// The sink's stored positions are at the end of every capture topic.
pub async fn caught_up(db: &TestDb, group: &str, prefix: &str) -> bool {
    for t in capture_topics(prefix) {
        let stored = db.stored_offsets(group, &t).await;
        // A partition no change went to has no stored position.
        let behind = end_offsets(&t)
            .into_iter()
            .any(|(p, end)| end > 0 && stored.get(&p) != Some(&end));
        if behind {
            return false;
        }
    }
    true
}

/// `verify --json` (plus `extra`): exit code and report.
pub fn verify(config: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(sink_binary())
        .arg("--config")
        .arg(config)
        .args(["verify", "--json"])
        .args(extra)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}
