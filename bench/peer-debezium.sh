#!/usr/bin/env bash
# Peer bench: the Debezium JDBC sink 3.6 on Kafka Connect 4.3.1 standalone, alone, on an
# existing topic of JSON order events (bench/produce-orders.sh makes one), from offset 0.
#   bench/peer-debezium.sh TOPIC DB_URL TABLE [TASKS] [BATCH]
#   TASKS=1 BATCH=500 are Debezium's defaults; PEER_BEST=1 (or TASKS=best) adds the best
#   configuration of issue 16: 4 tasks, dialect.postgres.unnest.insert.enabled,
#   use.reduction.buffer, batch 5000.
# Creates TABLE if missing (order_id text primary key, customer text, amount numeric(12,2),
# currency text, status text, version bigint, ts timestamptz). Another shape: PEER_DDL (the
# table's column list), PEER_SCHEMA (the Connect schema of the values), PEER_FLATTEN=1
# (nested fields into `<parent>_<field>` columns), PEER_TS_FIELD ("ts"; "-" for none).
# Prints one JSON line:
# {"system":"debezium-jdbc","tasks":..,"batch":..,"messages":..,"drain_s":..,"startup_s":..,
#  "msgs_per_s":..,"incl_startup_per_s":..,"worker_cpu_s":..}
# startup_s: worker launch until every task is RUNNING (REST status); drain_s: from then
# until the committed offsets of the group connect-<name> (read via the worker's
# GET /connectors/<name>/offsets; the worker flushes them every second) reach the
# topic's end offsets. The group is deleted afterwards (PEER_KEEP_GROUP=1 keeps it); the
# worker log is kept as /tmp/kafka-pg-sink-peer/<name>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
TOPIC="${1:?usage: $0 TOPIC DB_URL TABLE [TASKS] [BATCH]}"
DB_URL="${2:?DB_URL}"
TABLE="${3:?TABLE}"
TASKS="${4:-1}"
BATCH="${5:-}"
BEST="${PEER_BEST:-0}"
if [ "$TASKS" = best ]; then BEST=1; TASKS=4; fi
[ -n "$BATCH" ] || { [ "$BEST" = 1 ] && BATCH=5000 || BATCH=500; }
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
TIMEOUT_S="${PEER_TIMEOUT_S:-900}"
NAME="peer-debezium-$$-$(date +%s)"
log() { echo "[peer-debezium] $*" >&2; }
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

scripts/connect.sh fetch
KLIB="$(scripts/kafka.sh lib)"
kjava() { java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$KLIB/*" "$@" 2> >(grep -v "^SLF4J" >&2); }

# End and start offsets of the topic: messages = sum(end - earliest).
declare -A END
ends="$(kjava org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$BROKERS" --topic "$TOPIC" --time -1 2>/dev/null)"
starts="$(kjava org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$BROKERS" --topic "$TOPIC" --time -2 2>/dev/null)"
[ -n "$ends" ] || { log "topic $TOPIC not found"; exit 1; }
MESSAGES=0
while IFS=: read -r _ p off; do END[$p]=$off; MESSAGES=$((MESSAGES + off)); done <<<"$ends"
while IFS=: read -r _ p off; do MESSAGES=$((MESSAGES - off)); done <<<"$starts"
log "$TOPIC: $MESSAGES messages in ${#END[@]} partitions"

DDL="${PEER_DDL:-order_id text primary key, customer text, amount numeric(12,2), currency text, status text, version bigint, ts timestamptz}"
psql "$DB_URL" -XqAt -v ON_ERROR_STOP=1 -c "create table if not exists $TABLE ($DDL)" >/dev/null

work="$(mktemp -d)"
best_args=(); [ "$BEST" = 1 ] && best_args=(dialect.postgres.unnest.insert.enabled=true use.reduction.buffer=true)
shape_args=()
[ -n "${PEER_SCHEMA:-}" ] && shape_args+=(--schema "$PEER_SCHEMA")
[ "${PEER_FLATTEN:-0}" = 1 ] && shape_args+=(--flatten)
case "${PEER_TS_FIELD:-ts}" in -) shape_args+=(--timestamp-field "") ;; *) shape_args+=(--timestamp-field "${PEER_TS_FIELD:-ts}") ;; esac
scripts/connect.sh jdbc-sink-props "$NAME" --topic "$TOPIC" --url "$DB_URL" --table "$TABLE" \
  --tasks "$TASKS" --batch "$BATCH" "${shape_args[@]}" "${best_args[@]}" >"$work/connector.properties"
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

committed() { # sum over partitions of min(committed, end)
  local body p o sum=0
  body="$(curl -sf --max-time 5 "$URL/connectors/$NAME/offsets" || true)"
  while read -r p o; do
    [ -n "$p" ] || continue
    [ "$o" -gt "${END[$p]:-0}" ] && o="${END[$p]}"
    sum=$((sum + o))
  done < <(grep -o '"partition":{[^}]*},"offset":{[^}]*}' <<<"$body" \
           | sed -E 's/.*"kafka_partition":([0-9]+).*"kafka_offset":([0-9]+).*/\1 \2/')
  echo "$sum"
}
ENDSUM=0; for p in "${!END[@]}"; do ENDSUM=$((ENDSUM + END[$p])); done

deadline=$((SECONDS + TIMEOUT_S))
while :; do
  c="$(committed)"
  [ "$c" -ge "$ENDSUM" ] && break
  if [ $SECONDS -ge $deadline ]; then log "not drained after ${TIMEOUT_S}s (committed $c of $ENDSUM)"; tail -40 "$STATE_LOG" >&2; exit 1; fi
  if grep -q '"state":"FAILED"' <<<"$(curl -sf "$URL/connectors/$NAME/status" || true)"; then
    log "a task FAILED; last cause:"
    curl -sf "$URL/connectors/$NAME/status" | grep -o 'Caused by: [^\\]*' | tail -1 >&2 || true
    log "worker log: /tmp/kafka-pg-sink-peer/$NAME.log"; exit 1
  fi
  sleep 0.2
done
t2="$(now)"
# CPU seconds of the worker JVM (user+sys, startup included): comparable on a busy machine.
pid="$(scripts/connect.sh pid "$NAME" || echo)"
cpu="$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$pid/stat" 2>/dev/null || echo null)"
startup="$(sub "$t0" "$t1")"; drain="$(sub "$t1" "$t2")"
awk -v cpu="$cpu" -v t="$TASKS" -v b="$BATCH" -v m="$MESSAGES" -v d="$drain" -v s="$startup" -v best="$BEST" 'BEGIN {
  printf "{\"system\":\"debezium-jdbc\",\"tasks\":%d,\"batch\":%d,\"unnest_reduction\":%s,\"messages\":%d,\"drain_s\":%.2f,\"startup_s\":%.2f,\"msgs_per_s\":%.0f,\"incl_startup_per_s\":%.0f,\"worker_cpu_s\":%s}\n",
    t, b, (best == 1 ? "true" : "false"), m, d, s, m / d, m / (d + s), cpu }'
