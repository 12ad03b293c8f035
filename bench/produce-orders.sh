#!/usr/bin/env bash
# Produce a deterministic topic of JSON order events for the peer benches:
#   bench/produce-orders.sh TOPIC [MESSAGES] [PARTITIONS]
# value {"order_id":"o123","customer":"c23","amount":12.34,"currency":"EUR","status":"new",
#        "version":1,"ts":"2026-11-27T10:00:00Z"}, Kafka key = order_id (plain string).
# Shape (like issue 16's topic): 75% of MESSAGES are first versions of distinct keys, then
# interleaved: 10% exact re-sends of keys o0.. and 15% version-2 updates (status "paid",
# amount +1) of the keys after those, so the last event per key is well defined.
# Writes the expected final table (last event per key) as CSV to $EXPECTED
# (default /tmp/kafka-pg-sink-peer/TOPIC.expected.csv). Refuses a non-empty TOPIC.
set -euo pipefail
cd "$(dirname "$0")/.."
TOPIC="${1:?usage: $0 TOPIC [MESSAGES] [PARTITIONS]}"
N="${2:-200000}"
PARTS="${3:-4}"
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
WORK="${PEER_WORK_DIR:-/tmp/kafka-pg-sink-peer}"
EXPECTED="${EXPECTED:-$WORK/$TOPIC.expected.csv}"
log() { echo "[produce-orders] $*" >&2; }

KLIB="$(scripts/kafka.sh lib)"
kjava() { java -Xmx512m -XX:TieredStopAtLevel=1 -cp "$KLIB/*" "$@" 2> >(grep -v "^SLF4J" >&2); }
mkdir -p "$WORK"

end_total() {
  kjava org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$BROKERS" --topic "$TOPIC" --time -1 2>/dev/null \
    | awk -F: '{s += $NF} END {print s + 0}'
}

if kjava org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --list 2>/dev/null | grep -qx "$TOPIC"; then
  have="$(end_total)"
  [ "$have" = 0 ] || { log "topic $TOPIC already holds $have messages; pick another name"; exit 1; }
else
  kjava org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --create --topic "$TOPIC" \
    --partitions "$PARTS" --replication-factor 1 >/dev/null
fi

lines="$WORK/$TOPIC.lines"
awk -v n="$N" -v lines="$lines" -v expected="$EXPECTED" 'BEGIN {
  k = int(n * 0.75); r = int(n * 0.10); u = n - k - r;
  for (j = 0; j < n; j++) {
    if (j < k) { i = j; ver = 1 }
    else {
      m = j - k;                                  # interleave re-sends and updates
      if (m % 5 < 2 && rs < r) { i = rs++; ver = 1 } else if (us < u) { i = r + us++; ver = 2 } else { i = rs++; ver = 1 }
    }
    amount = (i % 10000) / 100 + 1 + (ver == 2 ? 1 : 0);
    cur = (i % 3 == 0) ? "USD" : "EUR";
    st = (ver == 2) ? "paid" : "new";
    s = i % 86400; ts = sprintf("2026-11-27T%02d:%02d:%02dZ", int(s / 3600), int(s % 3600 / 60), s % 60);
    printf "o%d\t{\"order_id\":\"o%d\",\"customer\":\"c%d\",\"amount\":%.2f,\"currency\":\"%s\",\"status\":\"%s\",\"version\":%d,\"ts\":\"%s\"}\n", i, i, i % 1000, amount, cur, st, ver, ts > lines;
    last[i] = sprintf("o%d,c%d,%.2f,%s,%s,%d,%s", i, i % 1000, amount, cur, st, ver, ts);
  }
  for (i = 0; i < k; i++) print last[i] > expected;
}'
log "producing $N messages ($(wc -l <"$EXPECTED") keys) to $TOPIC ($PARTS partitions)"
t0=$(date +%s.%N)
kjava org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BROKERS" --topic "$TOPIC" \
  --reader-property parse.key=true --reader-property "key.separator=$(printf '\t')" \
  --producer-property linger.ms=20 --producer-property batch.size=262144 \
  --producer-property compression.type=none --producer-property acks=1 <"$lines" >/dev/null
t1=$(date +%s.%N)
got="$(end_total)"
[ "$got" = "$N" ] || { log "topic holds $got messages, expected $N"; exit 1; }
rm -f "$lines"
log "done in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s; expected final state in $EXPECTED"
