#!/usr/bin/env bash
# One benchmark run: ceilings, write path, sink end to end, naive consumer,
# replay — ratios printed and written to bench/results/<date>.json.
#   BENCH_EVENTS=1000000 (default)  BENCH_NAIVE_EVENTS=20000 (default)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/postgres.sh ensure
scripts/kafka.sh ensure
cargo build --release --locked --bin kafka-pg-sink --example bench 2>&1 | tail -1
BIN="$(target_dir)/release"
SINK_BIN="$BIN/kafka-pg-sink" exec "$BIN/examples/bench"
