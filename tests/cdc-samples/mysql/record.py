#!/usr/bin/env python3
"""Records the Debezium MySQL connector samples in this directory (see README.md).

Runs against the scripts/mariadb.sh instance (Debezium compatibility mode) and one
standalone Connect worker from scripts/connect.sh with six connectors. Needs
confluent-kafka (scripts/tools-venv.sh prints a python that has it):

    bash scripts/kafka.sh ensure && bash scripts/mariadb.sh ensure
    $(bash scripts/tools-venv.sh) tests/cdc-samples/mysql/record.py [OUTDIR]

Drops and recreates database `cdcsamples`, forgets the worker `mdbsamples` first.
"""
import json
import os
import subprocess
import sys
import threading
import time

from confluent_kafka import Consumer, TopicPartition

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
OUT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(__file__))
BROKERS = os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092")
WORKER = "mdbsamples"
DB = "cdcsamples"

# name, prefix, tables, schemas, extra connector properties
CONNECTORS = [
    ("mdboff", "mdboff", "orders,items,alltypes", False, []),
    ("mdbon", "mdbon", "orders,items,alltypes", True, []),
    ("mdbdflton", "mdbdflt", "alltypes", True, ["decimal.handling.mode=precise"]),
    ("mdbprecoff", "mdbprecoff", "alltypes", False,
     ["column.propagate.source.type=.*", "bigint.unsigned.handling.mode=precise"]),
    ("mdbprecon", "mdbprecon", "alltypes", True,
     ["column.propagate.source.type=.*", "bigint.unsigned.handling.mode=precise"]),
    ("mdbtxoff", "mdbtx", "orders", False, ["provide.transaction.metadata=true"]),
]
PROPS = {}
PREFIX = {c[0]: c[1] for c in CONNECTORS}


def sh(*args, check=True, capture=True, stdin=None):
    r = subprocess.run(args, cwd=ROOT, input=stdin, text=True,
                       stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE if capture else None)
    if check and r.returncode != 0:
        raise SystemExit(f"failed: {args}\n{r.stdout}\n{r.stderr}")
    return r.stdout if capture else ""


def sql(text, db=""):
    db = DB if db == "" else db   # "" = the samples database, None = none
    args = ["bash", "scripts/mariadb.sh", "sql"] + ([db] if db else []) + ["-N", "-B"]
    return sh(*args, stdin=text)


def binlog_status():
    return sql("SHOW MASTER STATUS", db=None).split()[:2]


def topic(prefix, table):
    return f"{prefix}.{DB}.{table}"


def all_topics():
    ts = []
    for name, prefix, tables, _, extra in CONNECTORS:
        ts += [topic(prefix, t) for t in tables.split(",")] + [prefix]
        if any(e.startswith("provide.transaction.metadata") for e in extra):
            ts.append(f"{prefix}.transaction")
    return ts


def consumer():
    return Consumer({"bootstrap.servers": BROKERS, "group.id": "mdbsamples-recorder",
                     "enable.auto.commit": False, "enable.partition.eof": False})


def end_offsets(topics):
    c = consumer()
    md = c.list_topics(timeout=10)
    ends = {}
    for t in topics:
        if t in md.topics and not md.topics[t].error:
            for p in md.topics[t].partitions:
                lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                ends[(t, p)] = hi
    c.close()
    return ends


def wait_stable(before, min_new=0, quiet_s=3.0, timeout_s=90):
    """Waits until the topics' end offsets stop moving (and at least min_new records arrived)."""
    deadline = time.time() + timeout_s
    last, since = None, time.time()
    while time.time() < deadline:
        now = end_offsets(all_topics())
        new = sum(v - before.get(k, 0) for k, v in now.items())
        if now != last:
            last, since = now, time.time()
        elif new >= min_new and time.time() - since >= quiet_s:
            return now
        time.sleep(0.3)
    raise SystemExit(f"topics did not settle (wanted {min_new} new)")


def read(before, after, topics):
    """Records between two end-offset maps, for the given topics, in (topic, offset) order."""
    c = consumer()
    out = []
    for (t, p), hi in sorted(after.items()):
        if t not in topics:
            continue
        lo = before.get((t, p), 0)
        if hi <= lo:
            continue
        c.assign([TopicPartition(t, p, lo)])
        got = 0
        while got < hi - lo:
            m = c.poll(5)
            if m is None:
                raise SystemExit(f"timeout reading {t}")
            if m.error():
                continue
            got += 1
            out.append(event(m))
    c.close()
    return out


def parse(raw):
    if raw is None:
        return None, True
    s = raw.decode()
    v = json.loads(s)
    return v, json.dumps(v, separators=(",", ":"), ensure_ascii=False) == s


def event(m):
    k, kok = parse(m.key())
    v, vok = parse(m.value())
    e = {"topic": m.topic(), "partition": m.partition(), "offset": m.offset(), "key": k, "value": v}
    # Re-serialised compactly these are byte-identical to the record, except where Jackson
    # writes numbers differently from Python (e.g. 1.5E300): then the raw text is kept too.
    if not kok:
        e["key_raw"] = m.key().decode()
    if not vok:
        e["value_raw"] = m.value().decode()
    return e


def connector_meta(name):
    return {"name": name, "properties": PROPS[name]}


def save(num, slug, description, sql_text, ddl, events_by_conn, extra_note=None):
    """One file per connector variant: schemas-off/ and schemas-on/."""
    for name, evs in events_by_conn.items():
        if not evs:
            continue
        _, prefix, tables, schemas, extra = next(c for c in CONNECTORS if c[0] == name)
        sub = "schemas-on" if schemas else "schemas-off"
        variant = {"mdboff": "", "mdbon": "", "mdbdflton": "-connector-defaults",
                   "mdbprecoff": "-propagate-precise", "mdbprecon": "-propagate-precise",
                   "mdbtxoff": "-transaction-metadata"}[name]
        os.makedirs(os.path.join(OUT, sub), exist_ok=True)
        doc = {"description": description, "sql": sql_text, "table": ddl,
               "topics": sorted({e["topic"] for e in evs}),
               "converter": {"key.converter.schemas.enable": schemas,
                             "value.converter.schemas.enable": schemas},
               "connector": connector_meta(name)}
        if extra_note:
            doc["note"] = extra_note
        doc["events"] = evs
        path = os.path.join(OUT, sub, f"{num:02d}-{slug}{variant}.json")
        with open(path, "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"  wrote {os.path.relpath(path, ROOT)} ({len(evs)} records)")


def by_conn(evs):
    res = {}
    for name, prefix, tables, _, extra in CONNECTORS:
        mine = [e for e in evs if e["topic"] == prefix or e["topic"].startswith(prefix + ".")]
        res[name] = mine
    return res


def step(num, slug, description, sql_text, ddl, min_new, tables=None, schema_topic=False,
         db="", only=None):
    before = end_offsets(all_topics())
    binlog_before = binlog_status()
    sql(sql_text, db=db)
    after = wait_stable(before, min_new=min_new)
    topics = set()
    for name, prefix, ts, _, extra in CONNECTORS:
        for t in (tables or ts.split(",")):
            topics.add(topic(prefix, t))
        if schema_topic:
            topics.add(prefix)
        if any(e.startswith("provide.transaction.metadata") for e in extra):
            topics.add(f"{prefix}.transaction")
    evs = read(before, after, topics)
    groups = by_conn(evs)
    if only:
        groups = {k: v for k, v in groups.items() if k in only}
    note = f"binlog before: {binlog_before[0]}:{binlog_before[1]}, after: {':'.join(binlog_status())}"
    save(num, slug, description, sql_text, ddl, groups, note)
    return evs


ORDERS_DDL = ("CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(40) NOT NULL, "
              "amount DECIMAL(10,2), note TEXT)")
ALLTYPES_DDL = """CREATE TABLE alltypes (
  id INT PRIMARY KEY,
  u64 BIGINT UNSIGNED, i64 BIGINT, flag TINYINT(1), i8 TINYINT,
  dt0 DATETIME, dt3 DATETIME(3), dt6 DATETIME(6),
  ts0 TIMESTAMP NULL DEFAULT NULL, ts3 TIMESTAMP(3) NULL DEFAULT NULL, ts6 TIMESTAMP(6) NULL DEFAULT NULL,
  yr YEAR, en ENUM('small','medium','large'), st SET('a','b','c'), js JSON,
  b1 BIT(1), b12 BIT(12), dec1 DECIMAL(12,4), dec2 DECIMAL(30,0),
  d DATE, t0 TIME, t6 TIME(6),
  vc VARCHAR(20), tx TEXT, bl BLOB, dbl DOUBLE, fl FLOAT
)"""
ROW_FULL = ("({id}, 18446744073709551615, -9223372036854775808, 1, -128, "
            "'2024-02-29 13:14:15', '2024-02-29 13:14:15.123', '2024-02-29 13:14:15.123456', "
            "'2024-02-29 13:14:15', '2024-02-29 13:14:15.123', '2024-02-29 13:14:15.123456', "
            "2024, 'medium', 'a,c', '{{\"k\": [1, 2.5, \"x\"], \"n\": null, \"s\": \"é\"}}', "
            "b'1', b'101010101010', 12345678.9012, 123456789012345678901234567890, "
            "'2024-02-29', '-838:59:59', '12:34:56.789012', "
            "'héllo ✓', 'a text', x'00FF10', 1.5e300, 3.25)")
ROW_ZERO = ("({id}, 9223372036854775808, 9223372036854775807, 0, 127, "
            "'0000-00-00 00:00:00', '0000-00-00 00:00:00.000', '0000-00-00 00:00:00.000000', "
            "'0000-00-00 00:00:00', '0000-00-00 00:00:00.000', '0000-00-00 00:00:00.000000', "
            "0000, 'small', '', '[]', "
            "b'0', b'000000000001', -0.0001, -1, "
            "'0000-00-00', '00:00:00', '-00:00:00.000001', "
            "'', '', x'', -0.0, -1.17549e-38)")


def main():
    os.chdir(ROOT)
    print(f"recording into {OUT}")
    sh("bash", "scripts/connect.sh", "clean", WORKER)
    sql(f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB};", db=None)
    sql(f"""{ORDERS_DDL};
INSERT INTO orders VALUES (1,'alice',10.50,'first'),(2,'bob',20.00,NULL),(3,'carol',30.25,'x');
{ALLTYPES_DDL};
SET SESSION sql_mode='NO_ENGINE_SUBSTITUTION';
INSERT INTO alltypes (id) VALUES (9);
INSERT INTO alltypes VALUES {ROW_FULL.format(id=1)};
INSERT INTO alltypes VALUES {ROW_ZERO.format(id=3)};
""")
    files = []
    for name, prefix, tables, schemas, extra in CONNECTORS:
        args = ["bash", "scripts/connect.sh", "mysql-source-props", name, "--db", DB,
                "--tables", tables, "--prefix", prefix] + (["--schemas"] if schemas else []) + extra
        props = sh(*args)
        PROPS[name] = props.strip().splitlines()
        path = f"/tmp/{WORKER}-{name}.properties"
        with open(path, "w") as f:
            f.write(props)
        files.append(path)
    with open(f"/tmp/{WORKER}.files", "w") as f:
        f.write("\n".join(files))

    # 01: snapshot
    before = end_offsets(all_topics())
    t0 = time.time()
    sh("bash", "scripts/connect.sh", "start", WORKER, "-", *files, capture=False)
    print(f"  worker RUNNING after {time.time() - t0:.1f} s")
    after = wait_stable(before, min_new=2 * 6 + 4 * 3)
    evs = read(before, after, set(all_topics()))
    save(1, "snapshot", "Initial snapshot (snapshot.mode=initial): op r. alltypes row 3 holds zero "
         "dates, row 9 only NULLs; row 1 is written again while streaming (09-types, id 2) to "
         "compare snapshot and binlog encodings.",
         "(rows present before the connector started)", ORDERS_DDL + ";\n" + ALLTYPES_DDL,
         {k: [e for e in v if e["topic"] != PREFIX[k] and not e["topic"].endswith(".transaction")]
          for k, v in by_conn(evs).items()})
    save(1, "snapshot-schema-changes", "Schema-change records written during the snapshot "
         "(topic = topic.prefix; include.schema.changes=true).", "", "",
         {k: [e for e in v if e["topic"] in ("mdboff", "mdbon")] for k, v in by_conn(evs).items()})

    step(2, "insert", "Insert: op c, before null.",
         "INSERT INTO orders VALUES (4,'dave',40.00,'new')", ORDERS_DDL, 3, tables=["orders"])
    step(3, "update", "Update: op u, full before image (binlog_row_image=FULL).",
         "UPDATE orders SET amount=41.50, note='changed' WHERE id=4", ORDERS_DDL, 3, tables=["orders"])
    step(4, "delete", "Delete: op d (full before image) followed by a tombstone.",
         "DELETE FROM orders WHERE id=4", ORDERS_DDL, 5, tables=["orders"])
    step(5, "primary-key-update", "Primary-key update 3 -> 30: d {id:3} + tombstone + c {id:30}, "
         "all with the same source file/pos/row.",
         "UPDATE orders SET id=30 WHERE id=3", ORDERS_DDL, 7, tables=["orders"])
    step(6, "transaction", "One transaction, four statements (multi-row insert, multi-row update, "
         "delete, insert): one Gtid(BEGIN) ... Xid(COMMIT) group in the binlog, one rows event per "
         "statement. pos = the rows event, row = index in it.",
         "BEGIN;\nINSERT INTO orders VALUES (5,'eve',50.00,'tx'),(6,'frank',60.00,'tx');\n"
         "UPDATE orders SET note='tx-upd' WHERE id IN (1,2);\nDELETE FROM orders WHERE id=6;\n"
         "INSERT INTO orders VALUES (7,'grace',70.00,'tx');\nCOMMIT;", ORDERS_DDL, 10, tables=["orders"])
    step(7, "alter-add-column", "ALTER TABLE ADD COLUMN, then an insert: schema-change record on "
         "the prefix topic, then the row with the new column (schemas on: new value schema).",
         "ALTER TABLE orders ADD COLUMN priority INT NOT NULL DEFAULT 0;\n"
         "INSERT INTO orders VALUES (8,'heidi',80.00,'after alter',5);\n"
         "UPDATE orders SET priority=1 WHERE id=1;", ORDERS_DDL, 6, tables=["orders"], schema_topic=True,
         only=("mdboff", "mdbon", "mdbtxoff"))
    items_ddl = ("CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(30) NOT NULL, attrs JSON, "
                 "flags BIT(3), created DATETIME(3), price DECIMAL(8,2))")
    step(8, "table-created-mid-run", "A table created while streaming (it was in table.include.list "
         "before it existed): CREATE TABLE schema-change record, then its rows. Its JSON column is "
         "MariaDB's LONGTEXT alias: the connector learned the type from the binlog DDL text (JSON).",
         f"{items_ddl};\nINSERT INTO items VALUES (1,'pen','{{\"color\": \"blue\", \"n\": 2}}',b'101',"
         "'2024-05-06 07:08:09.123',1.25),(2,'ink',NULL,b'000',NULL,NULL);\n"
         "UPDATE items SET attrs='[1,2,3]' WHERE id=2;", items_ddl, 4, tables=["items"], schema_topic=True,
         only=("mdboff", "mdbon"))
    step(9, "types", "Every type, written while streaming (binlog row encoding): id 2 = the values "
         "of snapshot row 1; id 4 = zero dates and edge values (sql_mode without NO_ZERO_DATE); "
         "id 5 = NULLs. Compare with 01-snapshot (rows 1, 3, 9).",
         "SET SESSION sql_mode='NO_ENGINE_SUBSTITUTION';\n"
         f"INSERT INTO alltypes VALUES {ROW_FULL.format(id=2)};\n"
         f"INSERT INTO alltypes VALUES {ROW_ZERO.format(id=4)};\n"
         "INSERT INTO alltypes (id) VALUES (5);", ALLTYPES_DDL, 15, tables=["alltypes"],
         only=("mdboff", "mdbon", "mdbdflton", "mdbprecoff", "mdbprecon"))
    # 10: one statement whose rows fill several rows events (binlog_row_event_max_size 8 KiB)
    step(10, "statement-split-into-rows-events", "One INSERT of 20 rows with 1000-byte notes: the "
         "binlog splits the statement into several Write_rows events, so pos changes inside one "
         "statement and row restarts at 0 in each event.",
         "INSERT INTO orders (id, customer, amount, note) SELECT 100+seq, CONCAT('bulk', seq), seq, "
         "REPEAT('x', 1000) FROM seq_1_to_20;", ORDERS_DDL, 40, tables=["orders"])
    step(11, "binlog-rotation", "FLUSH BINARY LOGS between two inserts: the second insert's "
         "source.file is the next file and pos restarts near its beginning.",
         "INSERT INTO orders VALUES (9,'ivan',90.00,'before rotate',0);\nFLUSH BINARY LOGS;\n"
         "INSERT INTO orders VALUES (10,'judy',100.00,'after rotate',0);", ORDERS_DDL, 4,
         tables=["orders"])
    step(12, "multi-table-transaction", "One transaction over two tables (two topics): orders, items, "
         "orders. file/pos/row order the changes across both topics.",
         "BEGIN;\nINSERT INTO orders VALUES (11,'ken',110.00,'mt',0);\n"
         "INSERT INTO items VALUES (3,'cap',NULL,b'001',NULL,3.00);\n"
         "UPDATE orders SET note='mt2' WHERE id=11;\nCOMMIT;", ORDERS_DDL + ";\n" + items_ddl, 6,
         tables=["orders", "items"])
    graceful_restart()
    sigkill()
    print("done")


def graceful_restart():
    """13: stop the worker gracefully, write, start again: nothing lost, nothing re-sent."""
    before = end_offsets(all_topics())
    sh("bash", "scripts/connect.sh", "stop", WORKER)
    text = ("INSERT INTO orders VALUES (20,'while-stopped-1',1.00,'',0);\n"
            "INSERT INTO orders VALUES (21,'while-stopped-2',2.00,'',0),(22,'while-stopped-3',3.00,'',0);")
    sql(text)
    files = open(f"/tmp/{WORKER}.files").read().split()
    sh("bash", "scripts/connect.sh", "start", WORKER, "-", *files, capture=False)
    after = wait_stable(before, min_new=6)
    evs = read(before, after, {topic(p, "orders") for _, p, *_ in CONNECTORS})
    save(13, "graceful-restart", "Worker stopped gracefully (scripts/connect.sh stop), three rows "
         "written, worker started again: each row arrives once.", text, ORDERS_DDL,
         {k: v for k, v in by_conn(evs).items() if k in ("mdboff", "mdbon")})


def sigkill():
    """14: kill -9 the worker while a writer runs; restart; compare first sends and re-sends."""
    before = end_offsets(all_topics())
    stop = threading.Event()
    written = []

    def writer():
        p = subprocess.Popen(["bash", "scripts/mariadb.sh", "sql", DB], cwd=ROOT, stdin=subprocess.PIPE,
                             text=True)
        i = 1000
        while not stop.is_set():
            k = i % 4
            if k == 0:
                s = f"INSERT INTO orders VALUES ({i},'load',{i % 97}.00,'single',0);"
                written.append(("c", [i]))
            elif k == 1:
                s = (f"INSERT INTO orders VALUES ({i},'load',1.00,'multi',0),({i + 1000},'load',2.00,'multi',0),"
                     f"({i + 2000},'load',3.00,'multi',0);")
                written.append(("c", [i, i + 1000, i + 2000]))
            elif k == 2:
                s = (f"BEGIN; INSERT INTO orders VALUES ({i},'load',1.00,'tx',0); "
                     f"UPDATE orders SET amount=amount+1 WHERE id IN ({i - 1},{i - 1 + 1000},{i - 1 + 2000}); "
                     f"COMMIT;")
                written.append(("tx", [i]))
            else:
                s = f"INSERT INTO orders VALUES ({i},'load',4.00,'single',0); UPDATE orders SET note='upd' WHERE id={i};"
                written.append(("cu", [i]))
            if i == 1060:
                s += " FLUSH BINARY LOGS;"
            p.stdin.write(s + "\n")
            p.stdin.flush()
            i += 1
            time.sleep(0.02)
        p.stdin.close()
        p.wait()

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(4)
    sh("bash", "scripts/connect.sh", "kill", WORKER)
    killed_at = time.time()
    time.sleep(2)
    stop.set()
    th.join()
    files = open(f"/tmp/{WORKER}.files").read().split()
    sh("bash", "scripts/connect.sh", "start", WORKER, "-", *files, capture=False)
    after = wait_stable(before, min_new=10, quiet_s=4)
    print(f"  writer issued {len(written)} statements; killed {killed_at:.0f}")
    for name in ("mdboff", "mdbon"):
        prefix = name
        schemas = name == "mdbon"
        evs = read(before, after, {topic(prefix, "orders")})
        first, resent = {}, []
        for e in evs:
            v = e["value"]
            if v is None:
                continue
            src = v["payload"]["source"] if "payload" in v else v["source"]
            op = v["payload"]["op"] if "payload" in v else v["op"]
            ident = (src["file"], src["pos"], src["row"], op, json.dumps(e["key"], sort_keys=True))
            if ident in first:
                resent.append({"original": first[ident], "resent": e})
            else:
                first[ident] = e
        differing = set()
        for pair in resent:
            a, b = pair["original"], pair["resent"]
            va = a["value"]["payload"] if "payload" in a["value"] else a["value"]
            vb = b["value"]["payload"] if "payload" in b["value"] else b["value"]
            for f in set(va) | set(vb):
                if va.get(f) != vb.get(f):
                    differing.add(f)
            if a["key"] != b["key"]:
                differing.add("key")
        doc_note = (f"{len(evs)} records read, {len(resent)} of them re-sends of earlier records "
                    f"({'first 10 pairs kept' if schemas else 'all pairs kept'}) "
                    f"(same file/pos/row/op/key); fields that differ between an original and its "
                    f"re-send: {sorted(differing)}")
        print(f"  {name}: {doc_note}")
        sub = "schemas-on" if schemas else "schemas-off"
        with open(os.path.join(OUT, sub, "14-resend-after-sigkill.json"), "w") as f:
            json.dump({"description": "Worker SIGKILLed (scripts/connect.sh kill) while a writer ran "
                       "single-row inserts, 3-row inserts, insert+update transactions and a FLUSH BINARY "
                       "LOGS; restarted. pairs: each re-sent record with its first send.",
                       "note": doc_note, "connector": connector_meta(name),
                       "converter": {"key.converter.schemas.enable": schemas,
                                     "value.converter.schemas.enable": schemas},
                       "pairs": resent if not schemas else resent[:10]}, f, indent=1, ensure_ascii=False)
            f.write("\n")
        if not schemas:
            # the whole stream too (one record per line), for ordering checks
            with open(os.path.join(OUT, sub, "14-sigkill-stream.jsonl"), "w") as f:
                for e in evs:
                    f.write(json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n")
        check_complete(evs, written, name)


def check_complete(evs, written, name):
    seen = set()
    for e in evs:
        v = e["value"]
        if v is None:
            continue
        p = v["payload"] if "payload" in v else v
        if p["op"] == "c":
            seen.add(p["after"]["id"])
    want = {i for _, ids in written for i in ids}
    missing = sorted(want - seen)
    print(f"  {name}: {len(want)} inserted ids, {len(missing)} missing in the topic: {missing[:20]}")


if __name__ == "__main__":
    main()
