#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft, broker+controller) for development and
# tests, run with the JDK from jars resolved on Maven Central. Idempotent.
#   scripts/kafka.sh fetch    resolve jars into the cache (once)
#   scripts/kafka.sh ensure   fetch + start on 127.0.0.1:9092 unless it answers
#   scripts/kafka.sh stop|kill|restart|status
# Listeners: PLAINTEXT on KAFKA_PORT, the KRaft controller on +1, and
# SASL_PLAINTEXT with SCRAM-SHA-256 on +2 (user kpgs / kpgs-secret, for the
# SASL test; the broker has no authorizer, so authentication is what is tested).
# Env: KAFKA_VERSION (4.3.1), KAFKA_PG_SINK_CACHE (~/.cache/kafka-pg-sink),
#      KAFKA_STATE_DIR (/tmp/kafka-pg-sink-kafka), KAFKA_PORT (9092)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
CACHE="${KAFKA_PG_SINK_CACHE:-$HOME/.cache/kafka-pg-sink}"
# The suffix changes when the resolved jar set changes (old caches are then
# not reused): -2 pins slf4j-api 2.x so the broker actually logs.
LIB="$CACHE/kafka-$KAFKA_VERSION-2/lib"
STATE="${KAFKA_STATE_DIR:-/tmp/kafka-pg-sink-kafka}"
PORT="${KAFKA_PORT:-9092}"
CPORT=$((PORT + 1))
SPORT=$((PORT + 2))
SCRAM_USER=kpgs
SCRAM_PASSWORD=kpgs-secret
PIDFILE="$STATE/kafka.pid"

log() { echo "[kafka] $*" >&2; }

fetch() {
  if [ -f "$LIB/.complete" ]; then return; fi
  log "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $LIB"
  local work; work="$(mktemp -d)"
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kafka-pg-sink</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
    <!-- kafka_2.13 drags in slf4j-api 1.7, which cannot see the slf4j2 binding: no broker logs at all -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.16</version></dependency>
  </dependencies>
</project>
POM
  mkdir -p "$LIB.tmp"
  (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$LIB.tmp" >"$work/mvn.log" 2>&1) || { cat "$work/mvn.log" >&2; exit 1; }
  rm -rf "$LIB"; mv "$LIB.tmp" "$LIB"; touch "$LIB/.complete"; rm -rf "$work"
  log "cached $(ls "$LIB" | wc -l) jars"
}

write_config() {
  mkdir -p "$STATE/logs"
  cat >"$STATE/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT,SASL_PLAINTEXT://127.0.0.1:$SPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,SASL_PLAINTEXT://127.0.0.1:$SPORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
inter.broker.listener.name=PLAINTEXT
log.dirs=$STATE/data
# After a SIGKILL (tests/chaos.rs) every partition's log is recovered before
# the broker listens; thousands of test partitions took over a minute.
num.recovery.threads.per.data.dir=4
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.session.timeout.ms=10000
group.consumer.min.session.timeout.ms=6000
auto.create.topics.enable=true
log.retention.hours=-1
PROPS
  write_broker_log4j "$STATE/log4j2.yaml"
}

# The JVM options Kafka ships (bin/kafka-server-start.sh, kafka-run-class.sh): a
# 1 GiB heap, and G1 aiming at 20 ms pauses. The JVM's own 200 ms target let young
# collections pause this broker for 26-53 ms every few seconds, which every consumer
# of it, peers included, carried into its freshness tail (docs/performance.md).
java_opts() {
  echo "-Xmx1g -Xms1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true -Dlog4j2.configurationFile=$STATE/log4j2.yaml"
}

start() {
  fetch
  write_config
  if [ ! -f "$STATE/data/meta.properties" ]; then
    log "formatting $STATE/data"
    # shellcheck disable=SC2046
    java $(java_opts) -cp "$LIB/*" kafka.tools.StorageTool format --standalone \
      -t "kpgsink-$(date +%s)-cluster" -c "$STATE/server.properties" >"$STATE/logs/format.log" 2>&1 \
      || { cat "$STATE/logs/format.log" >&2; exit 1; }
  fi
  log "starting broker on 127.0.0.1:$PORT (state $STATE)"
  # shellcheck disable=SC2046
  nohup java $(java_opts) -cp "$LIB/*" kafka.Kafka "$STATE/server.properties" \
    >>"$STATE/logs/server.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  # Up to 5 minutes: a broker SIGKILLed with a large state dir (a reused
  # machine keeps /tmp) recovers every log first; it says so in its log.
  for _ in $(seq 1 600); do
    if port_open "$PORT"; then log "ready (pid $(cat "$PIDFILE"))"; scram_user; return; fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then tail -50 "$STATE/logs/server.log" >&2; exit 1; fi
    sleep 0.5
  done
  log "broker did not open $PORT in 300 s"; tail -50 "$STATE/logs/server.log" >&2; exit 1
}

# The SCRAM credential lives in the cluster metadata: created once per state dir.
scram_user() {
  [ -f "$STATE/scram-user.done" ] && return
  # shellcheck disable=SC2046
  java $(java_opts) -cp "$LIB/*" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$PORT" \
    --alter --entity-type users --entity-name "$SCRAM_USER" \
    --add-config "SCRAM-SHA-256=[iterations=4096,password=$SCRAM_PASSWORD]" >"$STATE/logs/scram.log" 2>&1 \
    || { cat "$STATE/logs/scram.log" >&2; exit 1; }
  touch "$STATE/scram-user.done"
  log "SCRAM user $SCRAM_USER on 127.0.0.1:$SPORT"
}

ensure() {
  if port_open "$PORT"; then
    if ! port_open "$SPORT" && [ -n "$(live_pid "$PIDFILE" "$STATE/server.properties")" ]; then
      log "broker predates the SASL listener; restarting it with the current config"
      stop_sig TERM; start; return
    fi
    log "already answering on $PORT"; fetch; scram_user; return
  fi
  start
}

stop_sig() { stop_pidfile "$1" "$PIDFILE" "$STATE/server.properties"; }

cmd="${1:-ensure}"
case "$cmd" in
  fetch) fetch ;;
  ensure) ensure ;;
  start) start ;;
  stop) stop_sig TERM ;;
  kill) stop_sig KILL ;;
  restart) stop_sig TERM; start ;;
  status) port_open "$PORT" && echo up || echo down ;;
  lib) fetch; echo "$LIB" ;;
  *) echo "usage: $0 [fetch|ensure|start|stop|kill|restart|status|lib]" >&2; exit 2 ;;
esac
