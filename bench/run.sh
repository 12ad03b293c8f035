#!/usr/bin/env bash
# One benchmark run: ceilings, write path, sink end to end (document, typed,
# Avro), replay, naive consumer, and with BENCH_PEERS=1 the Debezium JDBC sink
# on the same topic — ratios printed and written to bench/results/<date>.json.
#   BENCH_EVENTS=550000 (default)  BENCH_NAIVE_EVENTS=20000 (default)
#   BENCH_PEERS=1  also run the peer (Kafka Connect + Debezium, jars cached)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/postgres.sh ensure
scripts/kafka.sh ensure
scripts/registry.sh ensure
REGISTRY_URL="$(scripts/registry.sh url)"
export REGISTRY_URL
if [ "${BENCH_PEERS:-0}" = 1 ]; then scripts/connect.sh fetch; fi
cargo build --release --locked --bin kafka-pg-sink --example bench 2>&1 | tail -1
BIN="$(target_dir)/release"
SINK_BIN="$BIN/kafka-pg-sink" exec "$BIN/examples/bench"
