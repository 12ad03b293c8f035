#!/usr/bin/env bash
# Peer bench: the Debezium JDBC sink 3.6 on Kafka Connect 4.3.1 standalone replicating a whole
# Debezium capture (every table's topic, the change events as the source wrote them: JSON with
# schemas), configured the way its documentation says for a capture — topics.regex,
# collection.name.format with a ${source.…} placeholder, schema.evolution=basic (tables created
# and evolved from the events' schemas), primary.key.mode=record_key, insert.mode=upsert,
# delete.enabled=true, JsonConverter with schemas for key and value.
#   bench/peer-debezium-capture.sh TOPIC_REGEX DB_URL TABLE_FORMAT [TASKS] [BATCH] [KEY=VALUE...]
#   e.g. bench/peer-debezium-capture.sh 'shop\..*' postgres://postgres@127.0.0.1:5432/replica '${source.table}'
# TOPIC_REGEX is a Java regex matched against whole topic names (Connect's topics.regex);
# TABLE_FORMAT is collection.name.format (${topic}, ${source.table}, ${source.schema}, …).
# TASKS=1 BATCH=500 are Debezium's defaults; PEER_BEST=1 (or TASKS=best) adds the best
# configuration of issue 16 (4 tasks, dialect.postgres.unnest.insert.enabled,
# use.reduction.buffer, batch 5000). KEY=VALUE pairs are appended to the connector's properties
# (they override the above). Env: KAFKA_BROKERS (127.0.0.1:9092), PEER_TIMEOUT_S (900),
# PEER_KEEP_GROUP=1 keeps the consumer group, PEER_NAME names the worker/connector.
# Prints one JSON line:
# {"system":"debezium-jdbc","config":"capture","topics":..,"tasks":..,"batch":..,"messages":..,
#  "drain_s":..,"startup_s":..,"msgs_per_s":..,"incl_startup_per_s":..,"worker_cpu_s":..}
# startup_s: worker launch until every task is RUNNING (REST status); drain_s: from then until
# the committed offsets of the group connect-<name> (GET /connectors/<name>/offsets; the worker
# flushes them every second) reach every matching topic's end offsets (taken before the start).
# A FAILED task fails the script with its cause. The worker log is kept as
# /tmp/kafka-pg-sink-peer/<name>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
REGEX="${1:?usage: $0 TOPIC_REGEX DB_URL TABLE_FORMAT [TASKS] [BATCH] [KEY=VALUE...]}"
DB_URL="${2:?DB_URL}"
FORMAT="${3:?TABLE_FORMAT}"
shift 3
TASKS=1; BATCH=""
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then TASKS="$1"; shift; fi
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then BATCH="$1"; shift; fi
EXTRA=("$@")
BEST="${PEER_BEST:-0}"
if [ "$TASKS" = best ]; then BEST=1; TASKS=4; fi
[ -n "$BATCH" ] || { [ "$BEST" = 1 ] && BATCH=5000 || BATCH=500; }
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
TIMEOUT_S="${PEER_TIMEOUT_S:-900}"
NAME="${PEER_NAME:-peer-dbz-capture-$$-$(date +%s)}"
log() { echo "[peer-debezium-capture] $*" >&2; }
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

scripts/connect.sh fetch
KLIB="$(scripts/kafka.sh lib)"
kjava() { java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$KLIB/*" "$@" 2> >(grep -v "^SLF4J" >&2); }

# End and start offsets of every matching topic (GetOffsetShell's --topic is a regex too;
# both match whole names). messages = sum(end - earliest).
declare -A END
ends="$(kjava org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$BROKERS" --topic "$REGEX" --exclude-internal-topics --time -1 2>/dev/null)"
starts="$(kjava org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$BROKERS" --topic "$REGEX" --exclude-internal-topics --time -2 2>/dev/null)"
[ -n "$ends" ] || { log "no topic matches $REGEX"; exit 1; }
MESSAGES=0; ENDSUM=0
while IFS= read -r line; do
  off="${line##*:}"; tp="${line%:*}"   # topic:partition (topic names hold no ':')
  END[$tp]=$off; MESSAGES=$((MESSAGES + off)); ENDSUM=$((ENDSUM + off))
done <<<"$ends"
while IFS= read -r line; do MESSAGES=$((MESSAGES - ${line##*:})); done <<<"$starts"
TOPICS="$(cut -d: -f1 <<<"$ends" | sort -u | wc -l)"
log "$REGEX: $TOPICS topics, $MESSAGES messages in ${#END[@]} partitions"

read -r JDBC USER PW <<<"$(python3 - "$DB_URL" <<'PY'
import sys, urllib.parse as u
p = u.urlparse(sys.argv[1])
print(f"jdbc:postgresql://{p.hostname or '127.0.0.1'}:{p.port or 5432}{p.path or '/postgres'}",
      p.username or "postgres", p.password or "-")
PY
)"

work="$(mktemp -d)"
{
  cat <<PROPS
name=$NAME
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
tasks.max=$TASKS
topics.regex=$REGEX
connection.url=$JDBC
connection.username=$USER
PROPS
  [ "$PW" != - ] && echo "connection.password=$PW"
  cat <<PROPS
collection.name.format=$FORMAT
insert.mode=upsert
primary.key.mode=record_key
delete.enabled=true
schema.evolution=basic
batch.size=$BATCH
consumer.override.max.poll.records=$BATCH
consumer.override.auto.offset.reset=earliest
key.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=true
PROPS
  if [ "$BEST" = 1 ]; then
    echo "dialect.postgres.unnest.insert.enabled=true"
    echo "use.reduction.buffer=true"
  fi
  for kv in "${EXTRA[@]}"; do echo "$kv"; done
} >"$work/connector.properties"
: >"$work/worker.properties"

cleanup() {
  mkdir -p /tmp/kafka-pg-sink-peer
  cp "$(scripts/connect.sh log "$NAME")" "/tmp/kafka-pg-sink-peer/$NAME.log" 2>/dev/null || true
  scripts/connect.sh clean "$NAME" >/dev/null 2>&1 || true
  if [ "${PEER_KEEP_GROUP:-0}" != 1 ]; then
    kjava org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$BROKERS" \
      --delete --group "connect-$NAME" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

t0="$(now)"
scripts/connect.sh start "$NAME" "$work/worker.properties" "$work/connector.properties"
t1="$(now)"
URL="$(scripts/connect.sh url "$NAME")"
STATE_LOG="$(scripts/connect.sh log "$NAME")"
ENDS_FILE="$work/ends"
for tp in "${!END[@]}"; do echo "$tp ${END[$tp]}"; done >"$ENDS_FILE"

committed() { # sum over partitions of min(committed, end)
  curl -sf --max-time 5 "$URL/connectors/$NAME/offsets" 2>/dev/null \
    | jq -r '.offsets[]? | "\(.partition.kafka_topic):\(.partition.kafka_partition) \(.offset.kafka_offset)"' 2>/dev/null \
    | awk -v f="$ENDS_FILE" 'BEGIN { while ((getline l < f) > 0) { split(l, a, " "); e[a[1]] = a[2] } }
        ($1 in e) { o = $2 + 0; if (o > e[$1]) o = e[$1]; s += o } END { print s + 0 }'
}

deadline=$((SECONDS + TIMEOUT_S))
while :; do
  c="$(committed)"
  [ "$c" -ge "$ENDSUM" ] && break
  if [ $SECONDS -ge $deadline ]; then log "not drained after ${TIMEOUT_S}s (committed $c of $ENDSUM)"; tail -40 "$STATE_LOG" >&2; exit 1; fi
  if grep -q '"state":"FAILED"' <<<"$(curl -sf "$URL/connectors/$NAME/status" || true)"; then
    log "a task FAILED (committed $c of $ENDSUM); last cause:"
    curl -sf "$URL/connectors/$NAME/status" | grep -o 'Caused by: [^\\]*' | tail -1 >&2 || true
    log "worker log: /tmp/kafka-pg-sink-peer/$NAME.log"; exit 1
  fi
  sleep 0.2
done
t2="$(now)"
# CPU seconds of the worker JVM (user+sys, startup included).
pid="$(scripts/connect.sh pid "$NAME" || echo)"
cpu="$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$pid/stat" 2>/dev/null || echo null)"
startup="$(sub "$t0" "$t1")"; drain="$(sub "$t1" "$t2")"
awk -v cpu="$cpu" -v n="$TOPICS" -v t="$TASKS" -v b="$BATCH" -v m="$MESSAGES" -v d="$drain" -v s="$startup" -v best="$BEST" 'BEGIN {
  if (d <= 0) d = 0.01
  printf "{\"system\":\"debezium-jdbc\",\"config\":\"capture\",\"topics\":%d,\"tasks\":%d,\"batch\":%d,\"unnest_reduction\":%s,\"messages\":%d,\"drain_s\":%.2f,\"startup_s\":%.2f,\"msgs_per_s\":%.0f,\"incl_startup_per_s\":%.0f,\"worker_cpu_s\":%s}\n",
    n, t, b, (best == 1 ? "true" : "false"), m, d, s, m / d, m / (d + s), cpu }'
