#!/usr/bin/env bash
# One benchmark run: ceilings, write path, sink end to end (document, typed,
# Avro), replay, naive consumer, and with BENCH_PEERS=1 the Debezium JDBC sink
# on the same topic — ratios printed and written to bench/results/<date>.json.
#   BENCH_EVENTS=550000 (default)  BENCH_NAIVE_EVENTS=20000 (default)
#   BENCH_PEERS=1  also run the peer (Kafka Connect + Debezium, jars cached)
#   BENCH_RUNS=3   three runs, then each ratio's median
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
export SINK_BIN="$BIN/kafka-pg-sink"
# BENCH_RUNS=N: N runs back to back, then each ratio's median over them
# (one run's ratios move by ±0.1 with its ceilings on a shared machine).
runs="${BENCH_RUNS:-1}"
if [ "$runs" = 1 ]; then exec "$BIN/examples/bench"; fi
marker="$(mktemp)"
trap 'rm -f "$marker"' EXIT
for i in $(seq "$runs"); do
  echo "== run $i of $runs" >&2
  "$BIN/examples/bench"
done
mapfile -t results < <(find bench/results -name '*.json' -newer "$marker" | sort)
echo
"$BIN/examples/bench" --medians "${results[@]}"
