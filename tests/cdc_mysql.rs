//! A MySQL-family database replicated with one route: MariaDB 10.11
//! (scripts/mariadb.sh) captured by the real Debezium MySQL connector 3.6.1
//! on Kafka Connect 4.3.1 (scripts/connect.sh mysql-source-props), with
//! propagated column types and the connector's default `long` handling of
//! `BIGINT UNSIGNED` (the sink restores the wrapped values).
//!
//! 11 tables at the start (a composite key, reserved-word names, MySQL's
//! own types, 20,000 rows in the snapshot), then a seeded random workload:
//! multi-row inserts and updates (several rows in one binlog rows event),
//! deletes, primary-key updates, transactions across tables, a binlog
//! rotation, `ALTER TABLE … ADD COLUMN` with a default and a table created
//! mid-run — while the sink is SIGKILLed three times and the connector once
//! (it re-sends from its last flushed offset). Changes are ordered by their
//! binlog position (file, pos, row). Every table must end equal to its
//! source, stay equal through `replay --to-earliest` (never moving
//! backwards), and pass `verify`.
//!
//! Needs MariaDB (scripts/mariadb.sh ensure, done by scripts/test.sh); own
//! test binary because it starts a JVM worker.

mod common;

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::capture::{caught_up, verify, whole_database_route, Connector};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const T: Duration = Duration::from_secs(300);
const BIG_ROWS: i64 = 20_000;
const SMALL_TABLES: usize = 6;

/// `scripts/mariadb.sh sql` as root, `sql` on stdin; tab-separated output.
fn mariadb(db: Option<&str>, sql: &str) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{}/scripts/mariadb.sh", env!("CARGO_MANIFEST_DIR")))
        .args(["sql", "--default-character-set=utf8mb4", "-N", "-B"]);
    if let Some(db) = db {
        cmd.arg(db);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scripts/mariadb.sh");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), sql.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mariadb failed on:\n{sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A database of its own on the MariaDB instance; dropped with the test.
struct SourceDb {
    name: String,
}

impl SourceDb {
    fn new() -> SourceDb {
        let name = unique("kpgs_my_src");
        mariadb(None, &format!("CREATE DATABASE {name}"));
        SourceDb { name }
    }

    fn exec(&self, sql: &str) {
        mariadb(Some(&self.name), sql);
    }
}

impl Drop for SourceDb {
    fn drop(&mut self) {
        mariadb(None, &format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

/// How a column is printed for comparison, the same on both sides.
#[derive(Clone, Copy)]
enum Cmp {
    /// The value's text (integers, decimals, strings, enums, sets, dates,
    /// times — a MySQL TIME prints like the Postgres interval it becomes).
    Text,
    /// Wall-clock timestamps (DATETIME) with microseconds.
    DateTime,
    /// Instants (TIMESTAMP), in UTC.
    Instant,
    /// BIT(n) as n binary digits.
    Bits(u32),
    /// Bytes as upper-case hex.
    Hex,
}

/// A table: name, DDL, primary key, compared columns.
struct Table {
    name: String,
    ddl: String,
    key: Vec<&'static str>,
    cols: Vec<(String, Cmp)>,
}

fn table(name: &str, ddl: &str, key: &[&'static str], cols: &[(&str, Cmp)]) -> Table {
    Table {
        name: name.into(),
        ddl: ddl.into(),
        key: key.to_vec(),
        cols: cols.iter().map(|(c, k)| (c.to_string(), *k)).collect(),
    }
}

fn tables() -> Vec<Table> {
    use Cmp::*;
    let mut t = vec![
        table(
            "orders",
            "CREATE TABLE orders (region varchar(8) NOT NULL, id int NOT NULL, \
             amount decimal(12,2) NOT NULL, placed datetime(3) NOT NULL, \
             status enum('new','paid','shipped') NOT NULL, PRIMARY KEY (region, id))",
            &["region", "id"],
            &[
                ("region", Text),
                ("id", Text),
                ("amount", Text),
                ("placed", DateTime),
                ("status", Text),
            ],
        ),
        table(
            "order",
            "CREATE TABLE `order` (id int PRIMARY KEY, `select` varchar(20), `from` int)",
            &["id"],
            &[("id", Text), ("select", Text), ("from", Text)],
        ),
        table(
            "types",
            "CREATE TABLE types (id int PRIMARY KEY, u64 bigint unsigned, flag tinyint(1), \
             ts timestamp(6) NULL DEFAULT NULL, dt datetime NULL, d date, tm time, yr year, \
             js json, st set('a','b','c'), b5 bit(5), bl blob, dbl double, vc varchar(20), \
             tx text)",
            &["id"],
            &[
                ("id", Text),
                ("u64", Text),
                ("flag", Text),
                ("ts", Instant),
                ("dt", DateTime),
                ("d", Text),
                ("tm", Text),
                ("yr", Text),
                ("js", Text),
                ("st", Text),
                ("b5", Bits(5)),
                ("bl", Hex),
                ("dbl", Text),
                ("vc", Text),
                ("tx", Text),
            ],
        ),
        table(
            "big",
            "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, note text)",
            &["id"],
            &[("id", Text), ("v", Text), ("note", Text)],
        ),
    ];
    for i in 0..SMALL_TABLES {
        t.push(small(&format!("t{i:02}"), false));
    }
    t
}

fn small(name: &str, extra: bool) -> Table {
    use Cmp::*;
    let mut cols = vec![
        ("id", Text),
        ("qty", Text),
        ("price", Text),
        ("note", Text),
        ("updated", DateTime),
    ];
    if extra {
        cols.push(("extra", Text));
    }
    table(
        name,
        &format!(
            "CREATE TABLE {name} (id int PRIMARY KEY, qty int, price decimal(10,2), \
             note varchar(40), updated datetime(3))"
        ),
        &["id"],
        &cols,
    )
}

fn late() -> Table {
    table(
        "late",
        "CREATE TABLE late (id int PRIMARY KEY, label varchar(20))",
        &["id"],
        &[("id", Cmp::Text), ("label", Cmp::Text)],
    )
}

/// (MariaDB expression, Postgres expression) printing a column.
fn printed(col: &str, cmp: Cmp) -> (String, String) {
    let (m, p) = (format!("`{col}`"), format!("\"{col}\""));
    let (m, p) = match cmp {
        Cmp::Text => (format!("CAST({m} AS CHAR)"), format!("{p}::text")),
        Cmp::DateTime => (
            format!("DATE_FORMAT({m}, '%Y-%m-%d %H:%i:%s.%f')"),
            format!("to_char({p}, 'YYYY-MM-DD HH24:MI:SS.US')"),
        ),
        Cmp::Instant => (
            format!("DATE_FORMAT({m}, '%Y-%m-%d %H:%i:%s.%f')"),
            format!("to_char({p} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
        ),
        Cmp::Bits(n) => (format!("LPAD(BIN({m}), {n}, '0')"), format!("{p}::text")),
        Cmp::Hex => (format!("HEX({m})"), format!("upper(encode({p}, 'hex'))")),
    };
    (
        format!("COALESCE({m}, 'NULL')"),
        format!("COALESCE({p}, 'NULL')"),
    )
}

/// Per table, one line `name count md5`: MariaDB's and the replica's (a
/// missing replica table prints `missing`).
fn fingerprints_sql(tables: &[Table]) -> (String, String) {
    let (mut my, mut pg) = (String::new(), Vec::new());
    my.push_str("SET SESSION group_concat_max_len = 1073741824;\n");
    for t in tables {
        let (m, p): (Vec<String>, Vec<String>) = t.cols.iter().map(|(c, k)| printed(c, *k)).unzip();
        let order_m = t
            .key
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let order_p = t
            .key
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            my,
            "SELECT '{}', COUNT(*), COALESCE(MD5(GROUP_CONCAT(CONCAT_WS('|', {}) ORDER BY {order_m} SEPARATOR '\\n')), '') FROM `{}`;",
            t.name,
            m.join(", "),
            t.name
        );
        pg.push(format!(
            "SELECT '{0}' || chr(9) || count(*) || chr(9) || coalesce(md5(string_agg(concat_ws('|', {1}), chr(10) ORDER BY {order_p})), '') \
             FROM replica.\"{0}\"",
            t.name,
            p.join(", ")
        ));
    }
    (my, pg.join("\nUNION ALL\n"))
}

/// The tables whose replica differs from the source (`name: source vs replica`).
async fn differences(source: &SourceDb, target: &TestDb, tables: &[Table]) -> Vec<String> {
    let (my, _) = fingerprints_sql(tables);
    let want: Vec<String> = mariadb(Some(&source.name), &my)
        .lines()
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    for (t, want) in tables.iter().zip(&want) {
        let (_, pg) = fingerprints_sql(std::slice::from_ref(t));
        let got: Option<String> = sqlx::query_scalar(&pg)
            .fetch_optional(&target.pool)
            .await
            .unwrap_or(None);
        let got = got.unwrap_or_else(|| format!("{}\tmissing", t.name));
        if &got != want {
            out.push(format!("{}: source {want:?} vs replica {got:?}", t.name));
        }
    }
    out
}

/// Rows present before the connector starts (the snapshot).
fn seed(db: &SourceDb, tables: &[Table]) {
    let mut sql = String::new();
    for t in tables {
        let _ = writeln!(sql, "{};", t.ddl);
    }
    let _ = writeln!(
        sql,
        "INSERT INTO big SELECT seq, seq % 97, CONCAT('n', seq) FROM seq_1_to_{BIG_ROWS};"
    );
    for i in 0..SMALL_TABLES {
        let _ = writeln!(
            sql,
            "INSERT INTO t{i:02} SELECT seq, seq, seq + 0.5, CONCAT('s', seq), \
             '2026-01-01 00:00:00.001' FROM seq_1_to_20;"
        );
    }
    sql.push_str(
        "INSERT INTO orders VALUES ('eu', 1, 10.50, '2026-01-02 03:04:05.678', 'new');\n\
         INSERT INTO `order` VALUES (1, 'from', 1);\n",
    );
    sql.push_str(&types_row(1));
    db.exec(&sql);
}

/// A row of `types` with the values MySQL types make hard: unsigned
/// bigints past 2^63 (wrapped by the connector), TIMEs past a day and
/// negative, fractional TIMESTAMPs, sets, bits, JSON text, bytes.
fn types_row(id: i64) -> String {
    let u64s = ["18446744073709551615", "9223372036854775808", "0", "42"];
    let times = ["-838:59:59", "100:00:00", "-00:00:01", "12:34:56"];
    let k = (id % 4) as usize;
    format!(
        "REPLACE INTO types VALUES ({id}, {}, {}, '2026-03-0{} 10:11:12.{id:06}', \
         '1999-12-31 23:59:{:02}', '2024-02-29', '{}', {}, '{{\"k\": [{id}, 2.5], \"s\": \"é\"}}', \
         '{}', b'{:05b}', x'00FF{id:02X}', {}.25, 'héllo ✓ {id}', 'text {id}');\n",
        u64s[k],
        id % 2,
        1 + id % 9,
        id % 60,
        times[k],
        1901 + id,
        ["a", "a,c", "", "b,c"][k],
        id % 32,
        -id
    )
}

/// One random step of the workload; `next` is the next id per small table.
fn step(db: &SourceDb, rng: &mut StdRng, next: &mut [i32], extra_col: bool) {
    let i = rng.gen_range(0..SMALL_TABLES);
    let t = format!("t{i:02}");
    let id = rng.gen_range(1..next[i].max(2));
    let price = format!("{}.{:02}", rng.gen_range(0..500), rng.gen_range(0..100));
    let sql = match rng.gen_range(0..13) {
        0..=2 => {
            // Several rows in one rows event.
            let rows: Vec<String> = (0..rng.gen_range(1..5))
                .map(|_| {
                    next[i] += 1;
                    format!("({}, 1, {price}, 'n', '2026-02-03 04:05:06.789')", next[i])
                })
                .collect();
            format!(
                "INSERT INTO {t} (id, qty, price, note, updated) VALUES {}",
                rows.join(", ")
            )
        }
        3..=4 => format!(
            "UPDATE {t} SET qty = COALESCE(qty, 0) + 1, price = {price}, note = CONCAT(note, '+') \
             WHERE id % 5 = {}",
            id % 5
        ),
        5 => format!("DELETE FROM {t} WHERE id IN ({id}, {})", id + 1),
        6 => {
            next[i] += 1;
            format!("UPDATE {t} SET id = {} WHERE id = {id}", next[i])
        }
        7..=8 => {
            // A transaction across tables.
            let o = rng.gen_range(2..10_000);
            format!(
                "START TRANSACTION; \
                 INSERT IGNORE INTO orders VALUES ('us', {o}, {price}, NOW(3), 'paid'); \
                 UPDATE {t} SET note = 'order {o}' WHERE id = {id}; \
                 UPDATE orders SET status = 'shipped' WHERE region = 'eu' AND id = 1; \
                 DELETE FROM orders WHERE region = 'us' AND id = {}; COMMIT",
                rng.gen_range(2..10_000)
            )
        }
        9 => format!(
            "UPDATE big SET v = v + 1, note = 'changed' WHERE id BETWEEN {0} AND {0} + 40",
            rng.gen_range(1..=BIG_ROWS)
        ),
        10 => types_row(rng.gen_range(1..40)),
        11 if extra_col => format!("UPDATE t01 SET extra = extra + 1 WHERE id = {id}"),
        _ => "UPDATE `order` SET `from` = `from` + 1 WHERE id = 1".to_string(),
    };
    db.exec(&sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_family_database_replicates_by_binlog_position() {
    let mut rng = StdRng::seed_from_u64(test_seed("cdc_mysql"));
    let source = SourceDb::new();
    let mut tables = tables();
    seed(&source, &tables);
    let target = TestDb::new().await;

    let prefix = unique("kpgs_my");
    let include = format!("{}\\..*", source.name);
    let connector = Connector::start(
        "mysql-source-props",
        &[
            "--db",
            &source.name,
            "--tables",
            &include,
            "--prefix",
            &prefix,
            "--schemas",
            "--partitions",
            "2",
            "column.propagate.source.type=.*",
        ],
    );
    let route = whole_database_route(
        &format!("{prefix}\\\\.{}", source.name),
        "evolve = \"add_columns\"\n",
    );
    let cfg = SinkConfig::with_routes(
        &target,
        &route,
        "[kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = \"2000\"",
    );
    let mut sink = SinkProcess::start(&cfg);

    let mut next = vec![20i32; SMALL_TABLES];
    for round in 0..8 {
        if round == 2 {
            connector.wait_offset_with("\"event\"", T).await;
        }
        for _ in 0..rng.gen_range(30..60) {
            step(&source, &mut rng, &mut next, round >= 4);
        }
        match round {
            2 => {
                // The connector dies; restarted, it re-sends from its last
                // flushed offset. (Not right after a DDL: the MySQL
                // connector's schema history is written at once, its
                // offsets every second, and a restart between the two
                // reads older rows with the newer schema — docs/cdc.md.)
                connector.kill9();
                for _ in 0..20 {
                    step(&source, &mut rng, &mut next, false);
                }
                connector.restart(T).await;
            }
            3 => {
                // DDL follows the source: existing rows take the default.
                source.exec(
                    "ALTER TABLE t01 ADD COLUMN extra int NOT NULL DEFAULT 7; FLUSH BINARY LOGS",
                );
                tables[5] = small("t01", true);
            }
            4 => {
                let late = late();
                source.exec(&format!(
                    "{}; INSERT INTO late VALUES (1, 'first'), (2, 'second')",
                    late.ddl
                ));
                tables.push(late);
                sink.kill9();
                sink = SinkProcess::start(&cfg);
            }
            1 | 6 => {
                sink.kill9();
                sink = SinkProcess::start(&cfg);
            }
            _ => {}
        }
    }
    source.exec("UPDATE late SET label = 'changed' WHERE id = 2");

    if !poll_until(T, || async {
        differences(&source, &target, &tables).await.is_empty()
    })
    .await
    {
        panic!(
            "timed out after {T:?} waiting for every table to equal its source:\n{}\n\
             ---- connector log tail ----\n{}\n---- sink log ----\n{}",
            differences(&source, &target, &tables).await.join("\n"),
            connector.log_tail(60),
            sink.logs()
        );
    }
    wait_until(T, "positions at the end of every topic", || {
        caught_up(&target, &cfg.group, &prefix)
    })
    .await;
    let m = sink.metrics().await.unwrap();
    assert_metrics_identity(&m);
    let created = target
        .count("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'replica'")
        .await;
    assert_eq!(created as usize, tables.len(), "one table per source table");
    let position_type: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'replica.types'::regclass AND attname = '__source_position'",
    )
    .fetch_one(&target.pool)
    .await
    .unwrap();
    assert_eq!(position_type, "numeric");

    // A replay from the beginning: re-sent older changes never move a
    // table backwards.
    replay_to_earliest(&cfg);
    wait_until(T, "the replay to reach the end of every topic", || async {
        let d = differences(&source, &target, &tables).await;
        assert!(
            d.is_empty(),
            "a table moved during the replay:\n{}",
            d.join("\n")
        );
        caught_up(&target, &cfg.group, &prefix).await
    })
    .await;
    assert_metrics_identity(&sink.metrics().await.unwrap());

    let (code, report) = verify(&cfg.path, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["routes"].as_array().unwrap().len(),
        tables.len(),
        "{report}"
    );
}
