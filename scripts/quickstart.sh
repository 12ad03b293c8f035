#!/usr/bin/env bash
# Quickstart: start what is missing (PostgreSQL, Apache Kafka), produce demo
# order events WITH duplicates, run the sink until everything is stored, then
# show the table, the dead letters and the metrics (duplicate rate).
#   scripts/quickstart.sh          JSON orders into a document table (config/local.toml)
#   scripts/quickstart.sh --avro   Avro orders (schema registry too) into a typed
#                                  table created from the schema (config/avro.toml)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

case "${1:-}" in
  "") AVRO="" ;;
  --avro) AVRO=1 ;;
  *) echo "usage: $0 [--avro]" >&2; exit 2 ;;
esac

N="${DEMO_EVENTS:-10000}"
ADMIN_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DEMO_DB="kafka_pg_sink_demo"
DEMO_URL="${ADMIN_URL%/*}/$DEMO_DB"
PORT="${DEMO_HTTP_PORT:-9187}"
METRICS_SHOWN='messages_consumed|rows_inserted|rows_updated|duplicates|dead_letters|messages_skipped|batches|fenced'

if [ -n "$AVRO" ]; then
  CONFIG=config/avro.toml
  TOPIC="demo-orders-avro-$(date +%s)"
  TABLE=demo_orders_avro
  STATUS=status
  REGISTRY_URL="$(scripts/registry.sh url)"
  PRODUCER_OPTS=(--avro "$REGISTRY_URL")
  SHOW_TABLE=(-c "\\d $TABLE" -c "SELECT * FROM $TABLE ORDER BY order_id LIMIT 3")
  METRICS_SHOWN="$METRICS_SHOWN|schema_registry"
else
  CONFIG=config/local.toml
  TOPIC="demo-orders-$(date +%s)"
  TABLE=demo_orders
  STATUS="payload->>'status'"
  REGISTRY_URL=""
  PRODUCER_OPTS=()
  SHOW_TABLE=(-c "SELECT key, payload FROM $TABLE ORDER BY key LIMIT 3")
fi

scripts/postgres.sh ensure
scripts/kafka.sh ensure
if [ -n "$AVRO" ]; then scripts/registry.sh ensure; fi

echo "== building (release)"
cargo build --release --locked --bin kafka-pg-sink --example produce_demo 2>&1 | tail -1
BIN="$(target_dir)/release"

echo "== fresh demo database $DEMO_DB and topic $TOPIC"
psql "$ADMIN_URL" -Xq -c "DROP DATABASE IF EXISTS $DEMO_DB WITH (FORCE)" -c "CREATE DATABASE $DEMO_DB"
LIB="$(scripts/kafka.sh lib)"
java -cp "$LIB/*" org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 \
  --create --topic "$TOPIC" --partitions 4 --replication-factor 1 >/dev/null

# The config with this run's topic, database, metrics port (and registry).
WORK="$(mktemp -d)"
sed -e "s/^topic = .*/topic = \"$TOPIC\"/" \
    -e "/^\[postgres\]/,/^\[/ s#^url = .*#url = \"$DEMO_URL\"#" \
    -e "/^\[schema_registry\]/,/^\[/ s#^url = .*#url = \"$REGISTRY_URL\"#" \
    -e "s/^bind = .*/bind = \"127.0.0.1:$PORT\"/" "$CONFIG" >"$WORK/demo.toml"

echo "== producing $N distinct ${AVRO:+Avro }orders with duplicates"
SUMMARY="$("$BIN/examples/produce_demo" 127.0.0.1:9092 "$TOPIC" "$N" "${PRODUCER_OPTS[@]}")"
echo "   $SUMMARY"
PRODUCED="$(sed -n 's/.*produced=\([0-9]*\).*/\1/p' <<<"$SUMMARY")"
MALFORMED="$(sed -n 's/.*malformed=\([0-9]*\).*/\1/p' <<<"$SUMMARY")"

echo "== running kafka-pg-sink"
"$BIN/kafka-pg-sink" --config "$WORK/demo.toml" setup
"$BIN/kafka-pg-sink" --config "$WORK/demo.toml" run 2>"$WORK/sink.log" &
SINK=$!
trap 'kill $SINK 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  STORED="$(psql "$DEMO_URL" -XAtqc "SELECT coalesce(sum(next_offset),0) FROM sink_offsets WHERE topic = '$TOPIC'" 2>/dev/null || echo 0)"
  [ "$STORED" = "$PRODUCED" ] && break
  sleep 0.2
done
[ "$STORED" = "$PRODUCED" ] || { echo "sink did not catch up ($STORED/$PRODUCED)"; tail -30 "$WORK/sink.log"; exit 1; }

echo "== result"
psql "$DEMO_URL" -X -c "SELECT count(*) AS rows, count(*) FILTER (WHERE $STATUS = 'paid') AS updated_to_paid FROM $TABLE" \
  -c "SELECT kafka_offset, reason, error FROM sink_dead_letters ORDER BY kafka_offset" \
  "${SHOW_TABLE[@]}"
"$BIN/kafka-pg-sink" --config "$WORK/demo.toml" offsets show

echo "== metrics (http://127.0.0.1:$PORT/metrics)"
METRICS="$(curl -fsS "http://127.0.0.1:$PORT/metrics")"
grep -E "^kafka_pg_sink_($METRICS_SHOWN)" <<<"$METRICS"
awk '/^kafka_pg_sink_duplicates_total/ {d+=$2} /^kafka_pg_sink_messages_consumed_total/ {c=$2}
     END {printf "duplicate rate: %.1f%% (%d of %d messages)\n", 100*d/c, d, c}' <<<"$METRICS"

ROWS="$(psql "$DEMO_URL" -XAtqc "SELECT count(*) FROM $TABLE")"
DEAD="$(psql "$DEMO_URL" -XAtqc "SELECT count(*) FROM sink_dead_letters")"
kill -TERM $SINK; wait $SINK || true; trap - EXIT
if [ "$ROWS" != "$N" ]; then echo "FAIL: expected $N rows, found $ROWS"; exit 1; fi
if [ -n "$AVRO" ] && [ "$DEAD" != "$MALFORMED" ]; then
  echo "FAIL: expected $MALFORMED dead letters, found $DEAD"; exit 1
fi
echo "OK: $ROWS rows for $N distinct orders;${AVRO:+ $DEAD dead letters as expected;} $PRODUCED messages consumed exactly once."
