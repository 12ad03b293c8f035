#!/usr/bin/env python3
"""Acknowledged writes survive leader and controller SIGKILLs on the 3-node cluster.

Produces numbered messages (acks=all, enable.idempotence=true) into a fresh RF-3 topic with
4 partitions while it SIGKILLs, via scripts/kafka-cluster.sh:
  1. the leader of partition 0 (then restarts it and waits for the ISR to fill again),
  2. the active controller (then restarts it likewise),
then reads the whole topic back and checks that every acknowledged message is there exactly once.
Prints one JSON line with counts and timings; exit 1 if an acknowledged message is missing or
duplicated.

  PY=$(scripts/tools-venv.sh); scripts/kafka-cluster.sh ensure
  $PY scripts/kafka-cluster-proof.py [--rate 2000] [--seed N]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER = os.path.join(HERE, "kafka-cluster.sh")


def sh(*args):
    out = subprocess.run([CLUSTER, *args], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def log(msg):
    print(f"[cluster-proof] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=2000, help="messages per second")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--topic", default=None)
    a = ap.parse_args()
    random.seed(a.seed)
    log(f"seed {a.seed}")
    bootstrap = sh("brokers")
    topic = a.topic or f"proof-{a.seed}"
    sh("create-topic", topic, "4", "3")

    acked, failed = set(), {}
    ack_times = []  # (monotonic time of ack)
    lock = threading.Lock()

    def on_delivery(err, msg):
        seq = int(msg.value())
        with lock:
            if err is None:
                acked.add(seq)
                ack_times.append(time.monotonic())
            else:
                failed[seq] = str(err)

    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 120000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    stop = threading.Event()
    sent = [0]

    def produce():
        seq = 0
        t0 = time.monotonic()
        while not stop.is_set():
            target = int((time.monotonic() - t0) * a.rate)
            while seq < target:
                try:
                    p.produce(topic, key=str(random.randrange(1 << 30)).encode(), value=str(seq).encode(),
                              on_delivery=on_delivery)
                    seq += 1
                except BufferError:
                    break
            p.poll(0.005)
        sent[0] = seq

    th = threading.Thread(target=produce)
    th.start()
    events = {}
    try:
        time.sleep(3)
        leader = json.loads(sh("leaders", topic))["leaders"]["0"]
        t = time.monotonic()
        sh("kill", str(leader))
        moved = json.loads(sh("wait-leaders", topic, str(leader)))
        events["leader_killed"] = leader
        events["leader_kill_to_new_leaders_s"] = round(time.monotonic() - t, 2)
        log(f"killed leader of p0 (node {leader}); new leaders {moved['leaders']} after {events['leader_kill_to_new_leaders_s']} s")
        time.sleep(2)
        t = time.monotonic()
        sh("start", str(leader))
        sh("wait-isr", topic)
        events["leader_restart_to_isr_full_s"] = round(time.monotonic() - t, 2)
        log(f"node {leader} back, ISR full after {events['leader_restart_to_isr_full_s']} s")
        time.sleep(2)
        ctrl = int(sh("controller"))
        t = time.monotonic()
        sh("kill", str(ctrl))
        new_ctrl = int(sh("controller"))
        events["controller_killed"] = ctrl
        events["new_controller"] = new_ctrl
        events["controller_kill_to_new_controller_s"] = round(time.monotonic() - t, 2)
        sh("wait-leaders", topic, str(ctrl))
        events["controller_kill_to_new_leaders_s"] = round(time.monotonic() - t, 2)
        log(f"killed controller {ctrl}; controller now {new_ctrl} after {events['controller_kill_to_new_controller_s']} s")
        time.sleep(2)
        sh("start", str(ctrl))
        sh("wait-isr", topic)
        log(f"node {ctrl} back")
        time.sleep(2)
    finally:
        stop.set()
        th.join()
        remaining = p.flush(150)
    log(f"sent {sent[0]}, acked {len(acked)}, failed {len(failed)}, unflushed {remaining}")

    # Largest gap between two acknowledgements = how long producers stalled in a failover.
    ts = sorted(ack_times)
    max_gap = max((b - a_ for a_, b in zip(ts, ts[1:])), default=0.0)

    # Read everything back.
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"proof-reader-{a.seed}",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    meta = c.list_topics(topic, timeout=10).topics[topic]
    parts = sorted(meta.partitions)
    ends = {}
    for part in parts:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
        ends[part] = hi
    c.assign([TopicPartition(topic, part, 0) for part in parts])
    seen = {}
    done = set(pt for pt in parts if ends[pt] == 0)
    deadline = time.monotonic() + 120
    while len(done) < len(parts) and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        seq = int(m.value())
        seen[seq] = seen.get(seq, 0) + 1
        if m.offset() + 1 >= ends[m.partition()]:
            done.add(m.partition())
    c.close()
    missing = sorted(acked - set(seen))
    dups = sorted(s for s, n in seen.items() if n > 1)
    extra = len(set(seen) - acked)
    result = {
        "seed": a.seed, "topic": topic, "sent": sent[0], "acked": len(acked), "failed": len(failed),
        "read": sum(seen.values()), "distinct_read": len(seen), "missing_acked": len(missing),
        "duplicates": len(dups), "read_not_acked": extra, "max_ack_gap_s": round(max_gap, 2),
        "end_offsets": ends, **events,
    }
    print(json.dumps(result))
    if missing or dups:
        log(f"FAIL: missing {missing[:10]} dups {dups[:10]}")
        sys.exit(1)
    log("OK: every acknowledged message read back exactly once")


if __name__ == "__main__":
    main()
