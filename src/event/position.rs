//! Source positions: what orders a change event among the changes of its
//! key, in the source's own order — one integer per event, so the guard on
//! the commit path stays one comparison (`numeric` in Postgres).
//!
//! By `source.connector` (docs/cdc.md, "Positions"):
//! * `postgresql`: `lsn`, the WAL position of the change — or, for the last
//!   change of a row in a source transaction the whole-transactions gate
//!   released, one below its commit's LSN (the END marker's). Per row, LSNs
//!   already order changes across transactions (the next change waits for
//!   the commit), except against an initial snapshot: its rows carry the
//!   slot's consistent point, and a transaction open across the slot's
//!   creation commits after it with changes below it. By commit it sorts
//!   after the snapshot, as it should; its earlier changes of the same row
//!   keep their LSNs, so the transaction's own order holds. A connector's
//!   re-send of such a transaction gets the stamp on every change, so it
//!   compares equal to what the row holds (a duplicate) or lower.
//! * `mysql` (MySQL, and MariaDB captured by the MySQL connector):
//!   (binlog file number, `pos`, `row`) — `pos` is the rows event's offset
//!   in the file, `row` the row within it; packed as file·2⁹⁶ + pos·2³² +
//!   row. A snapshot's rows share the binlog position under its read lock,
//!   before every streamed change. Positions belong to one server: after a
//!   failover to another, or `RESET MASTER`, they restart and do not order.
//! * `sqlserver`: (`change_lsn`, `event_serial_no`). Per key the change LSN
//!   orders changes in commit order (a row's next change waits for the
//!   previous transaction's commit), so `commit_lsn` adds nothing; the
//!   serial orders an update's two events.
//! * `mongodb`: (cluster time seconds = `ts_ms` / 1000, `ord`, Kafka
//!   offset). `ts_ms`·`ord` is the change stream's cluster time, unique per
//!   oplog entry of a replica set — but every change of one multi-document
//!   transaction carries its commit's cluster time. The Kafka offset breaks
//!   those ties in log order (one document, one partition): a re-sent older
//!   transaction is still refused by its cluster time, a replay re-delivers
//!   the same offsets (refused as equal), and a connector restart re-sends
//!   a transaction's changes in their order, so the last one still wins.

use serde_json::Value;

use crate::types::{Offset, Version};

/// The position of a change event (its `source` block; `offset` in Kafka;
/// `commit`, its transaction's commit when the gate stamped it:
/// `SourceMessage::source_commit`).
pub fn of(source: &Value, offset: Offset, commit: Option<Version>) -> Result<Version, String> {
    let connector = source.get("connector").and_then(Value::as_str);
    match connector {
        Some("postgresql") | None => postgres(source, commit),
        Some("mysql") | Some("mariadb") => mysql(source),
        Some("sqlserver") => sqlserver(source),
        Some("mongodb") => mongodb(source, offset),
        Some(other) => Err(format!(
            "no source position is known for connector `{other}`: set the route's \
             `version = \"@source:<field>\"` to an integer field that orders its changes"
        )),
    }
}

fn int_field(source: &Value, field: &str) -> Result<Version, String> {
    match source.get(field) {
        Some(Value::Number(n)) => n.to_string().parse().ok(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("source.{field} is missing or not an integer"))
}

/// The change's LSN, or just below its transaction's commit (the END's LSN
/// is the end of the commit record: above every change of the transaction,
/// at or below every later change of the row).
fn postgres(source: &Value, commit: Option<Version>) -> Result<Version, String> {
    let lsn = int_field(source, "lsn")?;
    Ok(match commit {
        Some(c) if c > lsn + 1 => c - 1,
        _ => lsn,
    })
}

/// (file number, pos, row).
fn mysql(source: &Value) -> Result<Version, String> {
    let file = source
        .get("file")
        .and_then(Value::as_str)
        .ok_or("source.file is missing")?;
    let seq: u32 = file
        .rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n < 1 << 31)
        .ok_or_else(|| format!("source.file `{file}` does not end in a binlog number"))?;
    let pos = int_field(source, "pos")?;
    let row = int_field(source, "row")?;
    if !(0..1 << 64).contains(&pos) || !(0..1 << 32).contains(&row) {
        return Err(format!("source.pos {pos} / row {row} out of range"));
    }
    Ok((Version::from(seq) << 96) | (pos << 32) | row)
}

/// (cluster time seconds, `ord`, Kafka offset).
fn mongodb(source: &Value, offset: Offset) -> Result<Version, String> {
    let secs = int_field(source, "ts_ms")? / 1000;
    let ord = int_field(source, "ord")?;
    if !(0..1 << 32).contains(&secs) || !(0..1 << 32).contains(&ord) || offset.0 >= 1 << 62 {
        return Err(format!(
            "source.ts_ms / ord ({secs} s, {ord}) or offset out of range"
        ));
    }
    Ok((secs << 94) | (ord << 62) | Version::from(offset.0))
}

/// (`change_lsn`, `event_serial_no`); an LSN is `VLF:block:slot` in hex.
fn sqlserver(source: &Value) -> Result<Version, String> {
    let lsn = source
        .get("change_lsn")
        .and_then(Value::as_str)
        .ok_or("source.change_lsn is missing")?;
    let parts: Vec<&str> = lsn.split(':').collect();
    let [vlf, block, slot] = parts.as_slice() else {
        return Err(format!("source.change_lsn `{lsn}` is not VLF:block:slot"));
    };
    let hex = |s: &str, bits: u32| {
        u64::from_str_radix(s, 16)
            .ok()
            .filter(|v| *v < 1 << bits)
            .ok_or_else(|| format!("source.change_lsn `{lsn}`: `{s}` is not {bits}-bit hex"))
    };
    let value = (Version::from(hex(vlf, 32)?) << 48)
        | (Version::from(hex(block, 32)?) << 16)
        | Version::from(hex(slot, 16)?);
    let serial = int_field(source, "event_serial_no")?;
    if !(0..1 << 32).contains(&serial) {
        return Err(format!("source.event_serial_no {serial} out of range"));
    }
    Ok((value << 32) | serial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(v: Value) -> Version {
        of(&v, Offset(7), None).unwrap()
    }

    #[test]
    fn mysql_positions_order_by_file_then_pos_then_row() {
        let p = |file: &str, pos: i64, row: i64| {
            at(json!({"connector": "mysql", "file": file, "pos": pos, "row": row}))
        };
        // A rotation: the next file starts at a small pos.
        assert!(p("mariadb-bin.000003", 112319, 0) < p("mariadb-bin.000004", 514, 0));
        assert!(p("mariadb-bin.000003", 87186, 0) < p("mariadb-bin.000003", 87186, 1));
        assert!(p("mariadb-bin.000003", 87186, 1) < p("mariadb-bin.000003", 87380, 0));
        assert!(p("mysql-bin.999999", u32::MAX as i64 * 4, 0) > p("mysql-bin.999998", 1, 9));
        let e = of(
            &json!({"connector": "mysql", "file": "x", "pos": 1, "row": 0}),
            Offset(0),
            None,
        );
        assert!(e.unwrap_err().contains("binlog number"));
    }

    #[test]
    fn sqlserver_positions_order_by_change_lsn_then_serial() {
        let p = |lsn: &str, serial: i64| {
            at(json!({"connector": "sqlserver", "change_lsn": lsn, "event_serial_no": serial}))
        };
        assert!(p("00000027:00000758:0005", 2) > p("00000027:00000758:0005", 1));
        assert!(p("00000027:00000758:0006", 1) > p("00000027:00000758:0005", 2));
        assert!(p("00000028:00000001:0001", 1) > p("00000027:ffffffff:ffff", 9));
    }

    #[test]
    fn mongodb_orders_by_cluster_time_then_kafka_offset() {
        let p = |ts_ms: i64, ord: i64, offset: i64| {
            let source = json!({"connector": "mongodb", "ts_ms": ts_ms, "ord": ord, "rs": "rs0"});
            of(&source, Offset(offset), None).unwrap()
        };
        // A later cluster time wins whatever the offset (a re-sent older
        // transaction arrives at a higher offset).
        assert!(p(1_796_551_934_000, 1, 10) > p(1_796_551_933_000, 9, 500));
        assert!(p(1_796_551_934_000, 2, 10) > p(1_796_551_934_000, 1, 500));
        // One transaction's changes share a cluster time: log order decides.
        assert!(p(1_796_551_934_000, 2, 11) > p(1_796_551_934_000, 2, 10));
        assert!(of(&json!({"connector": "mongodb", "ord": 1}), Offset(0), None).is_err());
    }

    #[test]
    fn postgres_is_the_lsn() {
        assert_eq!(at(json!({"connector": "postgresql", "lsn": 123})), 123);
        assert_eq!(at(json!({"lsn": 5})), 5);
        let e = of(&json!({"connector": "oracle"}), Offset(0), None).unwrap_err();
        assert!(e.contains("oracle") && e.contains("@source:"), "{e}");
    }

    /// The positions of a snapshot row (the slot's consistent point), a
    /// transaction that straddled it (changes below it, commit above), and
    /// the next transaction on the same row.
    #[test]
    fn a_stamped_postgres_change_sorts_just_below_its_commit() {
        let pg = |lsn: i64, commit: Option<Version>| {
            of(
                &json!({"connector": "postgresql", "lsn": lsn}),
                Offset(0),
                commit,
            )
            .unwrap()
        };
        let snapshot = pg(1_000, None);
        let (earlier, last) = (pg(900, None), pg(950, Some(1_040)));
        assert!(
            earlier < snapshot,
            "unstamped, the straddler's change loses"
        );
        assert!(snapshot < last && last == 1_039);
        assert!(earlier < last, "its own order within the transaction holds");
        // The next change of the row starts at or after the commit's end.
        assert!(last < pg(1_040, None) && last < pg(1_100, Some(1_200)));
        // Other connectors ignore the stamp; a stamp not above the LSN is
        // not a commit of this change.
        let mysql = json!({"connector": "mysql", "file": "b.000001", "pos": 4, "row": 0});
        assert_eq!(
            of(&mysql, Offset(0), Some(1 << 100)),
            of(&mysql, Offset(0), None)
        );
        assert_eq!(pg(950, Some(950)), 950);
    }
}
