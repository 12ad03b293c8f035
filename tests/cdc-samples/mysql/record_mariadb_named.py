#!/usr/bin/env python3
"""Records 90-mariadb-named-version-restart.json: what goes wrong when the server's version
string still names MariaDB (the binlog client then asks for MariaDB GTID events, which the
MySQL connector does not take as transaction starts, so its offsets carry a row count
that a restart applies to the NEXT rows event).

Needs a second, stock instance whose version = 5.5.5-10.11.19-MariaDB-0+deb12u1-log
(passes the connector's version check, keeps "MariaDB" in the handshake):

    export MARIADB_STATE_DIR=/tmp/kafka-pg-sink-mariadb-stock MARIADB_PORT=3308 MARIADB_DEBEZIUM_COMPAT=0
    bash scripts/mariadb.sh ensure && bash scripts/mariadb.sh stop
    sed -i 's/^\\[mariadbd\\]$/[mariadbd]\\nversion = 5.5.5-10.11.19-MariaDB-0+deb12u1-log/' $MARIADB_STATE_DIR/my.cnf
    mariadbd --defaults-file=$MARIADB_STATE_DIR/my.cnf &      # (ensure would rewrite my.cnf)
    $(bash scripts/tools-venv.sh) tests/cdc-samples/mysql/record_mariadb_named.py
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import record as r  # noqa: E402

r.DB = "cdcnamed"
r.WORKER = "mdbnamed"
r.CONNECTORS = [("mdbnamed", "mdbnamed", "orders", False, [])]
r.PREFIX = {"mdbnamed": "mdbnamed"}


def main():
    os.chdir(r.ROOT)
    version = r.sql("SELECT VERSION()", db=None).strip()
    r.sh("bash", "scripts/connect.sh", "clean", r.WORKER)
    r.sql(f"DROP DATABASE IF EXISTS {r.DB}; CREATE DATABASE {r.DB};", db=None)
    r.sql("CREATE TABLE orders (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO orders VALUES (1,'snapshot');")
    props = r.sh("bash", "scripts/connect.sh", "mysql-source-props", "mdbnamed", "--db", r.DB,
                 "--tables", "orders", "--prefix", "mdbnamed")
    r.PROPS["mdbnamed"] = props.strip().splitlines()
    path = "/tmp/mdbnamed.properties"
    open(path, "w").write(props)
    before = r.end_offsets(r.all_topics())
    log = []

    def run(text, what):
        r.sql(text)
        log.append({"sql": text, "when": what})

    r.sh("bash", "scripts/connect.sh", "start", r.WORKER, "-", path, capture=False)
    r.wait_stable(before, min_new=1)
    run("INSERT INTO orders VALUES (2,'stream');\nINSERT INTO orders VALUES (3,'stream'),(4,'stream');",
        "worker running")
    r.wait_stable(before, min_new=4)
    time.sleep(2)
    r.sh("bash", "scripts/connect.sh", "stop", r.WORKER)
    offsets = open(f"/tmp/kafka-pg-sink-connect/{r.WORKER}/offsets.dat", "rb").read()
    stored_graceful = offsets[offsets.rfind(b'{"ts_sec'):].split(b"}")[0].decode() + "}"
    run("INSERT INTO orders VALUES (5,'while stopped');\nINSERT INTO orders VALUES (6,'while stopped'),(7,'while stopped');",
        "worker stopped gracefully")
    r.sh("bash", "scripts/connect.sh", "start", r.WORKER, "-", path, capture=False)
    r.wait_stable(before, min_new=5)
    run("INSERT INTO orders VALUES (8,'stream'),(9,'stream');", "worker running")
    r.wait_stable(before, min_new=6)
    time.sleep(2)
    r.sh("bash", "scripts/connect.sh", "kill", r.WORKER)
    offsets = open(f"/tmp/kafka-pg-sink-connect/{r.WORKER}/offsets.dat", "rb").read()
    stored_kill = offsets[offsets.rfind(b'{"ts_sec'):].split(b"}")[0].decode() + "}"
    run("INSERT INTO orders VALUES (10,'while killed'),(11,'while killed');\nINSERT INTO orders VALUES (12,'while killed');",
        "worker SIGKILLed")
    r.sh("bash", "scripts/connect.sh", "start", r.WORKER, "-", path, capture=False)
    after = r.wait_stable(before, min_new=6, quiet_s=4)
    evs = r.read(before, after, {r.topic("mdbnamed", "orders")})
    ids = sorted(e["value"]["after"]["id"] for e in evs if e["value"] and e["value"]["op"] in ("r", "c"))
    missing = sorted(set(range(1, 13)) - set(ids))
    skips = [line.split("] ", 1)[1] for line in
             open(f"/tmp/kafka-pg-sink-connect/{r.WORKER}/connect.log").read().splitlines()
             if "rows on streaming start" in line]
    doc = {"description": "Server version string names MariaDB (" + version + "): the connector "
           "starts and streams, but has no transaction boundaries (source.thread null, no BEGIN), "
           "so each stored offset is {pos: the event AFTER the last rows event, row: rows done in "
           "it}; a restart applies that row count to the next rows event and loses its rows.",
           "server_version": version,
           "stored_offset_before_graceful_restart": stored_graceful,
           "stored_offset_before_sigkill_restart": stored_kill,
           "connector_log_on_restarts": skips,
           "statements": log, "ids_written": list(range(1, 13)), "ids_received": ids,
           "ids_missing": missing,
           "connector": r.connector_meta("mdbnamed"), "events": evs}
    out = os.path.join(r.OUT, "schemas-off", "90-mariadb-named-version-restart.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out}: missing ids {missing}; offsets {stored_graceful} / {stored_kill}")
    r.sh("bash", "scripts/connect.sh", "stop", r.WORKER)


if __name__ == "__main__":
    main()
