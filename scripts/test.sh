#!/usr/bin/env bash
# The test command (README, .ci/run): sets up everything it needs on a fresh
# machine — PostgreSQL, a real Apache Kafka broker, a 3-node Kafka cluster and
# a Postgres primary/standby pair for the fault tests — then checks formatting,
# lints, and runs unit + integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"

# The side services below exist only for the tests: they are stopped when this
# command exits, pass or fail (KEEP_SERVICES=1 keeps them up for a rerun), so
# a benchmark run afterwards on the same machine does not share its two cores
# with a 3-node cluster, a Postgres pair, Citus and MariaDB. Postgres, the
# broker and the registry stay: the README's first command uses them.
stop_side_services() {
  [ "${KEEP_SERVICES:-0}" = 1 ] && return
  echo "== stopping the tests' side services (KEEP_SERVICES=1 keeps them)"
  scripts/kafka-cluster.sh stop || true
  scripts/pg-failover.sh stop || true
  scripts/citus.sh stop || true
  scripts/mariadb.sh stop || true
  scripts/pgbouncer.sh stop || true
  scripts/connect.sh source-db stop || true
}
trap stop_side_services EXIT

echo "== environment"
scripts/postgres.sh ensure
scripts/kafka.sh ensure
# Change data capture: Kafka Connect + Debezium (jars cached like Kafka's) and
# the source database cluster on 5433 (wal_level = logical).
scripts/connect.sh fetch
scripts/connect.sh source-db ensure
# Schema'd topics: a real Confluent-API schema registry (Apicurio, in memory).
scripts/registry.sh ensure
# MySQL-family CDC (tests/cdc_mysql.rs): MariaDB 10.11 from Debian on 3307.
scripts/mariadb.sh ensure
# PgBouncer in session pooling in front of 5432 (tests/pooler.rs), on 6442.
scripts/pgbouncer.sh ensure session
# Citus (tests/citus.rs, tests/replicate.rs): built from ../shared/vendor once
# (~7 min cold, cached under ~/.cache), started on 5444-5446. The build runs
# while the rest is set up and compiled; the tests wait for it.
scripts/citus.sh deps   # apt now, not beside another apt-get later
citus_log="$(mktemp)"
scripts/citus.sh ensure >"$citus_log" 2>&1 &
citus_pid=$!
REGISTRY_URL="$(scripts/registry.sh url)"
export REGISTRY_URL
# Fault tests kill and restart nodes of their own sets, never the two above:
scripts/kafka-cluster.sh ensure   # tests/cluster.rs: 3 KRaft nodes on 29092-29094, RF 3
scripts/pg-failover.sh ensure     # tests/failover.rs: primary + async standby behind 5439

# tests/upgrade.rs runs the previous version beside this one: built (or
# taken from ~/.cache) before this version's build, in the same target dir.
scripts/previous-version.sh build >/dev/null

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

echo "== deployment files"
scripts/check-deploy.sh

echo "== tests"
if ! wait "$citus_pid"; then
  cat "$citus_log" >&2
  echo "scripts/citus.sh ensure failed" >&2
  exit 1
fi
tail -1 "$citus_log"
# Test binaries run one after another; tests inside one run in parallel.
# Tests that restart shared services live in their own binaries.
# --no-fail-fast: one failing binary does not hide the others' results.
cargo test --all-targets --locked --no-fail-fast -- --test-threads "${TEST_THREADS:-4}"

echo "== container image (podman: build the Dockerfile, run it beside Kafka and Postgres)"
if [ "${SKIP_CONTAINER:-0}" = 1 ]; then
  echo "SKIPPED: SKIP_CONTAINER=1 -- the image was neither built nor run"
else
  scripts/container.sh build
  scripts/container.sh smoke
fi
