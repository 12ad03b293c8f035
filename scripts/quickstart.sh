#!/usr/bin/env bash
# Quickstart: start what is missing (PostgreSQL, Apache Kafka), produce demo
# order events WITH duplicates, run the sink until everything is stored, then
# show the table, the dead letters and the metrics (duplicate rate).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

N="${DEMO_EVENTS:-10000}"
ADMIN_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DEMO_DB="kafka_pg_sink_demo"
DEMO_URL="${ADMIN_URL%/*}/$DEMO_DB"
TOPIC="demo-orders-$(date +%s)"
PORT="${DEMO_HTTP_PORT:-9187}"

scripts/postgres.sh ensure
scripts/kafka.sh ensure

echo "== building (release)"
cargo build --release --locked --bin kafka-pg-sink --example produce_demo 2>&1 | tail -1
BIN="$(target_dir)/release"

echo "== fresh demo database $DEMO_DB and topic $TOPIC"
psql "$ADMIN_URL" -Xq -c "DROP DATABASE IF EXISTS $DEMO_DB WITH (FORCE)" -c "CREATE DATABASE $DEMO_DB"
LIB="$(scripts/kafka.sh lib)"
java -cp "$LIB/*" org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 \
  --create --topic "$TOPIC" --partitions 4 --replication-factor 1 >/dev/null

WORK="$(mktemp -d)"
sed -e "s/^topic = \"demo-orders\"/topic = \"$TOPIC\"/" \
    -e "s#^url = .*#url = \"$DEMO_URL\"#" \
    -e "s/^bind = .*/bind = \"127.0.0.1:$PORT\"/" config/local.toml >"$WORK/demo.toml"

echo "== producing $N distinct orders with duplicates"
SUMMARY="$("$BIN/examples/produce_demo" 127.0.0.1:9092 "$TOPIC" "$N")"
echo "   $SUMMARY"
PRODUCED="$(sed -n 's/.*produced=\([0-9]*\).*/\1/p' <<<"$SUMMARY")"

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
psql "$DEMO_URL" -X -c "SELECT count(*) AS rows, count(*) FILTER (WHERE payload->>'status' = 'paid') AS updated_to_paid FROM demo_orders" \
  -c "SELECT kafka_offset, reason, error FROM sink_dead_letters ORDER BY kafka_offset" \
  -c "SELECT key, payload FROM demo_orders ORDER BY key LIMIT 3"
"$BIN/kafka-pg-sink" --config "$WORK/demo.toml" offsets show

echo "== metrics (http://127.0.0.1:$PORT/metrics)"
METRICS="$(curl -fsS "http://127.0.0.1:$PORT/metrics")"
grep -E '^kafka_pg_sink_(messages_consumed|rows_inserted|rows_updated|duplicates|dead_letters|messages_skipped|batches|fenced)' <<<"$METRICS"
awk '/^kafka_pg_sink_duplicates_total/ {d+=$2} /^kafka_pg_sink_messages_consumed_total/ {c=$2}
     END {printf "duplicate rate: %.1f%% (%d of %d messages)\n", 100*d/c, d, c}' <<<"$METRICS"

ROWS="$(psql "$DEMO_URL" -XAtqc "SELECT count(*) FROM demo_orders")"
kill -TERM $SINK; wait $SINK || true; trap - EXIT
if [ "$ROWS" != "$N" ]; then echo "FAIL: expected $N rows, found $ROWS"; exit 1; fi
echo "OK: $ROWS rows for $N distinct orders; $PRODUCED messages consumed exactly once."
