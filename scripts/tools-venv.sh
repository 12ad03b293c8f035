#!/usr/bin/env bash
# A Python venv with confluent-kafka for the helper scripts (cluster proof, topic-shape facts).
# confluent-kafka 2.12.1 bundles librdkafka 2.12.1, the same librdkafka as the Rust crate's
# rdkafka-sys 4.10.0+2.12.1, so what it shows is what the sink's consumer sees.
#   scripts/tools-venv.sh        ensure the venv, print its python
# Env: KAFKA_PG_SINK_CACHE (~/.cache/kafka-pg-sink), CONFLUENT_KAFKA_VERSION (2.12.1)
set -euo pipefail
CACHE="${KAFKA_PG_SINK_CACHE:-$HOME/.cache/kafka-pg-sink}"
VER="${CONFLUENT_KAFKA_VERSION:-2.12.1}"
VENV="$CACHE/venv-tools"
log() { echo "[tools-venv] $*" >&2; }
if [ ! -f "$VENV/.complete-$VER" ]; then
  log "creating $VENV with confluent-kafka $VER"
  python3 -m venv "$VENV" >&2 || { apt-get install -y -qq python3-venv >&2 && python3 -m venv "$VENV" >&2; }
  "$VENV/bin/pip" install -q "confluent-kafka==$VER" >&2
  touch "$VENV/.complete-$VER"
fi
echo "$VENV/bin/python"
