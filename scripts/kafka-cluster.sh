#!/usr/bin/env bash
# A real 3-node Apache Kafka cluster (KRaft; every node is broker AND controller,
# 3 voters) for fault tests, run from the same cached Maven jars as scripts/kafka.sh.
# Replication factor 3, min.insync.replicas 2, fast (but realistic) failure detection.
#
#   scripts/kafka-cluster.sh ensure          format + start missing nodes, wait until a RF-3
#                                            probe topic is fully in sync on all 3 brokers
#   scripts/kafka-cluster.sh stop [N]        graceful stop (SIGTERM, controlled shutdown) of N or all
#   scripts/kafka-cluster.sh kill N          SIGKILL node N (returns once the process is gone)
#   scripts/kafka-cluster.sh start [N]       start node N (or all missing), wait until it is unfenced
#   scripts/kafka-cluster.sh pause N|resume N  SIGSTOP / SIGCONT node N (a hung, not dead, node)
#   scripts/kafka-cluster.sh status          JSON: per node pid, process/port up (no JVM, ~10 ms)
#   scripts/kafka-cluster.sh leaders TOPIC   JSON: {"topic":..,"leaders":{"0":2,..},"isr":{..},"replicas":{..}}
#                                            (leader -1 = none)
#   scripts/kafka-cluster.sh wait-leaders TOPIC [NOT_ID]  until every partition has a live leader
#                                            (!= NOT_ID); JSON as `leaders` plus "ms"
#   scripts/kafka-cluster.sh wait-isr [TOPIC...]  until isr == replicas everywhere (default: all topics)
#   scripts/kafka-cluster.sh controller      the active controller's node id (KRaft quorum leader),
#                                            a bare integer; what kafka-metadata-quorum describe --status
#                                            calls LeaderId
#   scripts/kafka-cluster.sh quorum          JSON: quorum leader, epoch, voters' lag
#   scripts/kafka-cluster.sh create-topic TOPIC PARTITIONS [RF=3] [key=value...]
#                                            idempotent; waits until every partition has a leader
#   scripts/kafka-cluster.sh brokers         the bootstrap string 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
#   scripts/kafka-cluster.sh registered      JSON: brokers registered in the metadata, with fenced flag
#   scripts/kafka-cluster.sh pid N | port N  node N's pid / client port
#   scripts/kafka-cluster.sh reset           stop (SIGKILL) everything and delete the state dir
# Machine-readable results go to stdout; progress lines go to stderr prefixed [kafka-cluster].
#
# Ports: node N (1..3) serves clients on CLUSTER_BASE_PORT+N-1 (29092, 29093, 29094) and its
# KRaft controller listener on CLUSTER_BASE_PORT+10+N-1 (29102, 29103, 29104).
# Env: CLUSTER_BASE_PORT (29092), CLUSTER_STATE_DIR (/tmp/kafka-pg-sink-cluster),
#      CLUSTER_HEAP (384m), CLUSTER_WAIT_MS (90000), CLUSTER_JIT (-XX:TieredStopAtLevel=1; set to
#      a blank to get C2), CLUSTER_JAVA_OPTS (appended), KAFKA_VERSION, KAFKA_PG_SINK_CACHE (as kafka.sh)
#
# Failure detection (defaults in brackets), chosen so a test sees a failover within seconds while
# staying in the range production clusters use:
#   broker.heartbeat.interval.ms=500 [2000], broker.session.timeout.ms=3000 [9000]
#     -> a SIGKILLed broker is fenced and its partitions get new leaders ~3 s after its last heartbeat
#   controller.quorum.fetch.timeout.ms=1000 [2000], controller.quorum.election.timeout.ms=500 [1000]
#     -> a SIGKILLed active controller is replaced after ~1-1.5 s
#   replica.lag.time.max.ms=10000 [30000] -> a stuck (not dead) follower leaves the ISR after 10 s
#   unclean.leader.election.enable=false (default): only in-sync replicas become leader
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
CACHE="${KAFKA_PG_SINK_CACHE:-$HOME/.cache/kafka-pg-sink}"
STATE="${CLUSTER_STATE_DIR:-/tmp/kafka-pg-sink-cluster}"
BASE="${CLUSTER_BASE_PORT:-29092}"
HEAP="${CLUSTER_HEAP:-384m}"
WAIT_MS="${CLUSTER_WAIT_MS:-90000}"
NODES="1 2 3"
PROBE_TOPIC="__kafka_cluster_probe"
SLF4J_VERSION=2.0.16
# C1 only: three JVMs starting at once on two shared cores reach "ready" in ~9 s instead of
# 13-27 s with the tiered C2 compiler; steady-state broker throughput is lower but ample for tests.
JIT="${CLUSTER_JIT--XX:TieredStopAtLevel=1}"

T0="$(date +%s%N)"
log() { echo "[kafka-cluster] $*" >&2; }
elapsed() { echo "$(( ($(date +%s%N) - T0) / 1000000 )) ms"; }
die() { log "$*"; exit 1; }

cport() { echo $((BASE + $1 - 1)); }
qport() { echo $((BASE + 10 + $1 - 1)); }
ndir() { echo "$STATE/node$1"; }
# Only a pid that is still our node counts (see live_pid in lib.sh).
node_pid() { live_pid "$(ndir "$1")/kafka.pid" "$(ndir "$1")/server.properties"; }
alive() { [ -n "$(node_pid "$1")" ]; }
bootstrap() {
  local s=""
  for n in $NODES; do s="${s:+$s,}127.0.0.1:$(cport "$n")"; done
  echo "$s"
}
check_node() { case "${1:-}" in 1|2|3) ;; *) die "node must be 1, 2 or 3 (got '${1:-}')" ;; esac; }

lib() {
  # Same jars as the single dev broker: kafka.sh fetches (or finds) them.
  LIB="$(KAFKA_VERSION="$KAFKA_VERSION" KAFKA_PG_SINK_CACHE="$CACHE" "$HERE/kafka.sh" lib)"
  # Maven resolves slf4j-api 1.7 for that set while the log4j binding is for slf4j 2, so a
  # broker started from it logs NOTHING (slf4j falls back to NOP). One extra jar, put first
  # on the class path, gives the cluster nodes real logs.
  EXTRA="$CACHE/kafka-cluster-extra"
  if [ ! -f "$EXTRA/.complete" ]; then
    log "fetching slf4j-api $SLF4J_VERSION into $EXTRA"
    mkdir -p "$EXTRA.tmp"
    mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
      -Dartifact="org.slf4j:slf4j-api:$SLF4J_VERSION" -DoutputDirectory="$EXTRA.tmp" >"$CACHE/kafka-cluster-extra.log" 2>&1 \
      || { cat "$CACHE/kafka-cluster-extra.log" >&2; die "maven could not fetch slf4j-api"; }
    rm -rf "$EXTRA"; mv "$EXTRA.tmp" "$EXTRA"; touch "$EXTRA/.complete"
  fi
  CP="$EXTRA/*:$LIB/*"
}

# The admin helper, compiled once per source version into the cache.
tool_build() {
  lib
  local sum; sum="$(cat "$HERE/KafkaClusterTool.java" "$LIB/.complete" | sha1sum | cut -c1-12)"
  TOOL="$CACHE/kafka-cluster-tool-$KAFKA_VERSION-$sum"
  [ -f "$TOOL/.complete" ] && return
  log "compiling KafkaClusterTool"
  rm -rf "$TOOL.tmp"; mkdir -p "$TOOL.tmp"
  javac -nowarn -d "$TOOL.tmp" -cp "$LIB/kafka-clients-$KAFKA_VERSION.jar" "$HERE/KafkaClusterTool.java" >&2
  rm -rf "$TOOL"; mv "$TOOL.tmp" "$TOOL"; touch "$TOOL/.complete"
}

tool() {
  tool_build
  mkdir -p "$STATE"
  [ -f "$STATE/tool-log4j2.yaml" ] || printf 'Configuration:\n  Loggers:\n    Root:\n      level: OFF\n' >"$STATE/tool-log4j2.yaml"
  java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto -Xmx128m \
    -Dlog4j2.configurationFile="$STATE/tool-log4j2.yaml" \
    -cp "$TOOL:$CP" \
    KafkaClusterTool "$@"
}

voters() {
  local v=""
  for n in $NODES; do v="${v:+$v,}$n@127.0.0.1:$(qport "$n")"; done
  echo "$v"
}

write_config() {
  local n="$1" d; d="$(ndir "$n")"
  mkdir -p "$d/logs"
  cat >"$d/server.properties" <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://127.0.0.1:$(cport "$n"),CONTROLLER://127.0.0.1:$(qport "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(cport "$n")
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$d/data
num.partitions=4
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
auto.create.topics.enable=true
log.retention.hours=-1
group.initial.rebalance.delay.ms=0
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.session.timeout.ms=10000
group.consumer.min.session.timeout.ms=6000
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
controller.quorum.fetch.timeout.ms=1000
controller.quorum.election.timeout.ms=500
replica.lag.time.max.ms=10000
PROPS
  write_broker_log4j "$d/log4j2.yaml" org.apache.kafka.controller.QuorumController org.apache.kafka.raft.QuorumState
}

java_opts() {
  echo "-Xmx$HEAP -Xms$HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true -Dlog4j2.configurationFile=$(ndir "$1")/log4j2.yaml $JIT ${CLUSTER_JAVA_OPTS:-}"
}

format_missing() {
  mkdir -p "$STATE"
  [ -f "$STATE/cluster.id" ] || tool_uuid >"$STATE/cluster.id"
  local id; id="$(cat "$STATE/cluster.id")"
  local pids=() n d
  for n in $NODES; do
    d="$(ndir "$n")"
    write_config "$n"
    [ -f "$d/data/meta.properties" ] && continue
    log "formatting node $n ($d/data)"
    # shellcheck disable=SC2046
    java $(java_opts "$n") -XX:TieredStopAtLevel=1 -cp "$CP" kafka.tools.StorageTool format \
      --cluster-id="$id" -c "$d/server.properties" >"$d/logs/format.log" 2>&1 &
    pids+=("$!:$n")
  done
  local p
  for p in "${pids[@]}"; do
    wait "${p%%:*}" || { cat "$(ndir "${p#*:}")/logs/format.log" >&2; die "format of node ${p#*:} failed"; }
  done
}

# A KRaft cluster id is a base64url-encoded 16-byte UUID (22 chars). One in
# 64 starts with '-', which a command line reads as an option (Kafka's own
# Uuid.randomUuid draws again then, and so does this; the format above also
# passes it as --cluster-id=…, for a state dir that kept such an id).
tool_uuid() {
  local id=-
  while [ "${id:0:1}" = "-" ]; do
    id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  done
  echo "$id"
}

launch() {
  local n="$1" d; d="$(ndir "$n")"
  if alive "$n"; then return; fi
  port_open "$(cport "$n")" && die "port $(cport "$n") is taken by another process (node $n is not ours)"
  write_config "$n"
  log "$(elapsed): starting node $n on 127.0.0.1:$(cport "$n") (controller :$(qport "$n"))"
  # shellcheck disable=SC2046
  nohup java $(java_opts "$n") -cp "$CP" kafka.Kafka "$d/server.properties" \
    >>"$d/logs/server.log" 2>&1 </dev/null &
  echo $! >"$d/kafka.pid"
}

wait_port() {
  local n="$1"
  for _ in $(seq 1 $((WAIT_MS / 250))); do
    port_open "$(cport "$n")" && return 0
    alive "$n" || { tail -40 "$(ndir "$n")/logs/server.log" >&2; die "node $n exited"; }
    sleep 0.25
  done
  die "node $n did not open $(cport "$n")"
}

ensure() {
  lib
  format_missing
  local n
  for n in $NODES; do launch "$n"; done
  for n in $NODES; do wait_port "$n"; done
  log "$(elapsed): all client ports open"
  tool wait-ready "$(bootstrap)" 3 "$PROBE_TOPIC" "$WAIT_MS" >/dev/null || die "cluster not ready"
  log "$(elapsed): ready: $(bootstrap)"
}

start_node() {
  local n="$1"
  lib
  format_missing
  launch "$n"
  wait_port "$n"
  tool wait-broker "$(bootstrap)" "$n" "$WAIT_MS"
}

# ours PID:NODE: the process is still that node's broker.
ours() { pid_is "${1%%:*}" "$(ndir "${1#*:}")/server.properties"; }

stop_nodes() {
  local sig="$1"; shift
  local n p pids=()
  for n in "$@"; do
    p="$(node_pid "$n")"
    [ -n "$p" ] || continue
    kill -CONT "$p" 2>/dev/null || true
    kill "-$sig" "$p" 2>/dev/null || true
    pids+=("$p:$n")
  done
  local i
  local tries=120; [ "$sig" = KILL ] && tries=200
  for i in $(seq 1 "$tries"); do
    local left=0
    for p in "${pids[@]}"; do ours "$p" && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.25
  done
  for p in "${pids[@]}"; do
    if ours "$p"; then
      log "node ${p#*:} still running after SIG$sig; SIGKILL"
      kill -9 "${p%%:*}" 2>/dev/null || true
      while ours "$p"; do sleep 0.05; done
    fi
    rm -f "$(ndir "${p#*:}")/kafka.pid"
  done
}

status() {
  local n first=1 p up port
  printf '{"bootstrap":"%s","nodes":[' "$(bootstrap)"
  for n in $NODES; do
    p="$(node_pid "$n")"; alive "$n" && up=true || up=false
    port_open "$(cport "$n")" && port=true || port=false
    [ "$first" = 1 ] || printf ','
    first=0
    printf '{"id":%s,"port":%s,"controller_port":%s,"pid":%s,"process":%s,"listening":%s}' \
      "$n" "$(cport "$n")" "$(qport "$n")" "${p:-null}" "$up" "$port"
  done
  printf ']}\n'
}

cmd="${1:-ensure}"; shift || true
case "$cmd" in
  ensure) ensure ;;
  start)
    if [ $# -eq 0 ]; then ensure; else check_node "$1"; start_node "$1"; fi ;;
  stop)
    if [ $# -eq 0 ]; then stop_nodes TERM $NODES; else check_node "$1"; stop_nodes TERM "$1"; fi ;;
  kill) check_node "${1:-}"; stop_nodes KILL "$1" ;;
  pause) check_node "${1:-}"; kill -STOP "$(node_pid "$1")" ;;
  resume) check_node "${1:-}"; kill -CONT "$(node_pid "$1")" ;;
  status) status ;;
  leaders) [ $# -ge 1 ] || die "usage: leaders TOPIC"; tool leaders "$(bootstrap)" "$1" ;;
  wait-leaders) [ $# -ge 1 ] || die "usage: wait-leaders TOPIC [NOT_ID]"
    tool wait-leaders "$(bootstrap)" "$1" "$WAIT_MS" "${2:--1}" ;;
  wait-isr) tool wait-isr "$(bootstrap)" "$WAIT_MS" "$@" ;;
  controller) tool controller "$(bootstrap)" "$WAIT_MS" ;;
  quorum) tool quorum "$(bootstrap)" ;;
  create-topic) [ $# -ge 2 ] || die "usage: create-topic TOPIC PARTITIONS [RF] [key=value...]"
    tool create-topic "$(bootstrap)" "$@" ;;
  registered) tool brokers "$(bootstrap)" ;;
  brokers|bootstrap) bootstrap ;;
  pid) check_node "${1:-}"; node_pid "$1" ;;
  port) check_node "${1:-}"; cport "$1" ;;
  reset) stop_nodes KILL $NODES; rm -rf "$STATE"; log "removed $STATE" ;;
  build) tool_build; echo "$TOOL" ;;
  *) echo "usage: $0 [ensure|start [N]|stop [N]|kill N|pause N|resume N|status|leaders TOPIC|wait-leaders TOPIC [NOT_ID]|wait-isr [TOPIC..]|controller|quorum|brokers|registered|pid N|port N|reset]" >&2; exit 2 ;;
esac
