#!/usr/bin/env bash
# The test command (README, .ci/run): sets up everything it needs on a fresh
# machine — PostgreSQL, a real Apache Kafka broker, a 3-node Kafka cluster and
# a Postgres primary/standby pair for the fault tests — then checks formatting,
# lints, and runs unit + integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"

echo "== environment"
scripts/postgres.sh ensure
scripts/kafka.sh ensure
# Fault tests kill and restart nodes of their own sets, never the two above:
scripts/kafka-cluster.sh ensure   # tests/cluster.rs: 3 KRaft nodes on 29092-29094, RF 3
scripts/pg-failover.sh ensure     # tests/failover.rs: primary + async standby behind 5439

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

echo "== deployment files"
scripts/check-deploy.sh

echo "== tests"
# Test binaries run one after another; tests inside one run in parallel.
# Tests that restart shared services live in their own binaries.
cargo test --all-targets --locked -- --test-threads "${TEST_THREADS:-4}"
