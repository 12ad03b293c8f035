#!/usr/bin/env python3
"""What librdkafka (confluent-kafka 2.12.1 = librdkafka 2.12.1, as the Rust crate) delivers on
transactional and compacted topics. Creates its own topics on the broker (default the dev broker
127.0.0.1:9092), never changes broker config. Prints a report (JSON lines) on stdout.

  PY=$(scripts/tools-venv.sh)
  $PY scripts/topic-shapes.py txn        # transactions interleaved with plain writes
  $PY scripts/topic-shapes.py compact    # compacted topic, waits until the cleaner ran
  Env: BOOTSTRAP (127.0.0.1:9092)
"""
import json
import os
import sys
import time
import uuid

from confluent_kafka import Consumer, IsolationLevel, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

BOOTSTRAP = os.environ.get("BOOTSTRAP", "127.0.0.1:9092")
RUN = uuid.uuid4().hex[:8]


def out(**kw):
    print(json.dumps(kw), flush=True)


def log(msg):
    print(f"[topic-shapes] {msg}", file=sys.stderr, flush=True)


def create(admin, topic, config=None):
    fs = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config=config or {})])
    fs[topic].result()
    time.sleep(0.5)


def ends(admin, topic):
    tp = TopicPartition(topic, 0)
    r = {}
    for name, iso in (("high_watermark", IsolationLevel.READ_UNCOMMITTED),
                      ("last_stable_offset", IsolationLevel.READ_COMMITTED)):
        r[name] = admin.list_offsets({tp: OffsetSpec.latest()}, isolation_level=iso)[tp].result().offset
    r["log_start"] = admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result().offset
    return r


def consume(topic, isolation, idle_s=3.0):
    """Read partition 0 from the beginning; report delivered offsets, EOF events, positions."""
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"shapes-{RUN}-{isolation}",
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    tp = TopicPartition(topic, 0, 0)
    c.assign([tp])
    delivered, eofs, pos_after = [], [], []
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                eofs.append(m.offset())
                last = time.monotonic()
            continue
        delivered.append((m.offset(), (m.value() or b"<tombstone>").decode()))
        # position() right after this message was handed over, before any further poll
        pos_after.append((m.offset(), c.position([TopicPartition(topic, 0)])[0].offset))
        last = time.monotonic()
    pos = c.position([TopicPartition(topic, 0)])[0].offset
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)
    c.commit(offsets=[TopicPartition(topic, 0, pos)], asynchronous=False) if pos >= 0 else None
    committed = c.committed([TopicPartition(topic, 0)], timeout=5)[0].offset
    c.close()
    return {"isolation": isolation, "delivered": delivered, "position_when_delivered": pos_after,
            "partition_eof_offsets": eofs,
            "position_after_last": pos, "get_watermark_offsets": [lo, hi], "committed_position": committed}


def txn():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    topic = f"shapes-txn-{RUN}"
    create(admin, topic)
    plain = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "acks": "all"})
    tx = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": f"shapes-{RUN}"})
    tx.init_transactions(10)

    def p(v):
        plain.produce(topic, value=v.encode(), partition=0)
        plain.flush(10)

    def t(v):
        tx.produce(topic, value=v.encode(), partition=0)
        tx.flush(10)

    p("plain-1")                                  # 0
    tx.begin_transaction(); t("c1-a"); t("c1-b")  # 1, 2
    tx.commit_transaction(10)                     # 3 = commit marker
    tx.begin_transaction(); t("a1-a"); t("a1-b")  # 4, 5
    tx.abort_transaction(10)                      # 6 = abort marker
    p("plain-2")                                  # 7, but see the report: the abort marker is
                                                  # written asynchronously and can land after it
    tx.begin_transaction(); t("c2-a")             # 8
    p("plain-3-inside-open-txn")                  # 9 (plain write while a transaction is open)
    t("c2-b")                                     # 10
    mid = ends(admin, topic)                      # LSO held back by the open transaction
    out(case="txn", step="transaction c2 still open", **mid,
        read_committed_while_open=consume(topic, "read_committed", 2.0))
    tx.commit_transaction(10)                     # 11 = commit marker, the LAST entry of the log
    time.sleep(0.5)
    out(case="txn", step="last entry is a commit marker", topic=topic, layout={
        0: "plain-1", 1: "c1-a", 2: "c1-b", 3: "COMMIT marker", 4: "a1-a (aborted)", 5: "a1-b (aborted)",
        "6,7": "plain-2 and the ABORT marker, in either order", 8: "c2-a", 9: "plain-3 (plain, during open txn)", 10: "c2-b",
        11: "COMMIT marker"}, **ends(admin, topic))
    out(case="txn", **consume(topic, "read_committed"))
    out(case="txn", **consume(topic, "read_uncommitted"))
    # Now end the log with an ABORT marker instead.
    tx.begin_transaction(); t("a2-a")             # 12
    tx.abort_transaction(10)                      # 13 = abort marker
    time.sleep(0.5)
    out(case="txn", step="last entry is an abort marker", **ends(admin, topic))
    out(case="txn", step="last entry is an abort marker", **consume(topic, "read_committed"))


def compact():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    topic = f"shapes-compact-{RUN}"
    create(admin, topic, {"cleanup.policy": "compact", "segment.ms": "1000", "min.cleanable.dirty.ratio": "0.001",
                          "min.compaction.lag.ms": "0", "delete.retention.ms": "1000",
                          "max.compaction.lag.ms": "2000"})
    p = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "acks": "all"})
    # 3 keys, each written 4 times; key k2's last write is a tombstone.
    n = 0
    for rnd in range(4):
        for k in ("k0", "k1", "k2"):
            v = None if (k == "k2" and rnd == 3) else f"{k}-v{rnd}".encode()
            p.produce(topic, key=k.encode(), value=v, partition=0)
            n += 1
    p.flush(10)
    before = ends(admin, topic)
    out(case="compact", step="written", topic=topic, records=n, **before)
    # The active segment is never cleaned: keep rolling segments (segment.ms=1 s rolls on the next
    # append) with writes to an unrelated key until the cleaner has removed old k0..k2 records.
    deadline = time.monotonic() + 180
    t0 = time.monotonic()
    stage = 0
    while time.monotonic() < deadline:
        time.sleep(1.5)
        p.produce(topic, key=b"roll", value=b"roll", partition=0)
        p.flush(10)
        r = consume(topic, "read_committed", 1.0)
        offs = [o for o, _ in r["delivered"]]
        firsts = [o for o, v in r["delivered"] if not v.startswith("roll")]
        gaps = [(a, b) for a, b in zip(offs, offs[1:]) if b != a + 1]
        if stage == 0 and firsts and firsts[0] != 0 and len(firsts) <= 3:
            out(case="compact", step=f"after the first cleaning ({round(time.monotonic() - t0)} s)",
                **ends(admin, topic), **r, gaps=gaps)
            stage = 1
        if stage == 1 and "<tombstone>" not in [v for _, v in r["delivered"]]:
            out(case="compact", step=f"tombstone removed too ({round(time.monotonic() - t0)} s)",
                **ends(admin, topic), **r, gaps=gaps)
            return
    log("the cleaner did not run within 180 s")
    sys.exit(1)


if __name__ == "__main__":
    {"txn": txn, "compact": compact}[sys.argv[1] if len(sys.argv) > 1 else "txn"]()
