#!/usr/bin/env bash
# A real Confluent-compatible schema registry for development and tests:
# Apicurio Registry (in-memory storage) run with the JDK from the `-all`
# tar.gz on Maven Central. Idempotent.
#   scripts/registry.sh fetch    resolve + unpack the registry into the cache (once)
#   scripts/registry.sh ensure   fetch + start on 127.0.0.1:$REGISTRY_PORT unless it is ready
#   scripts/registry.sh stop|kill|restart|status
#   scripts/registry.sh url      print the Confluent API base URL (…/apis/ccompat/v7)
#   scripts/registry.sh tls-url|ca   with REGISTRY_TLS_PORT: the https URL / the CA file
# Storage is in memory: a restart forgets every schema (tests register their own).
# With REGISTRY_TLS_PORT set, the registry also serves https on that port with a
# server certificate for 127.0.0.1/localhost signed by a test CA made once with
# openssl in $STATE/tls (ca.crt is what a client trusts).
# Env: REGISTRY_VERSION (2.6.13.Final), KAFKA_PG_SINK_CACHE (~/.cache/kafka-pg-sink),
#      REGISTRY_STATE_DIR (/tmp/kafka-pg-sink-registry), REGISTRY_PORT (18081),
#      REGISTRY_TLS_PORT (unset: no https)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REGISTRY_VERSION="${REGISTRY_VERSION:-2.6.13.Final}"
CACHE="${KAFKA_PG_SINK_CACHE:-$HOME/.cache/kafka-pg-sink}"
HOME_DIR="$CACHE/apicurio-registry-$REGISTRY_VERSION"
JAR="$HOME_DIR/apicurio-registry-app-$REGISTRY_VERSION-runner.jar"
STATE="${REGISTRY_STATE_DIR:-/tmp/kafka-pg-sink-registry}"
PORT="${REGISTRY_PORT:-18081}"
TLS_PORT="${REGISTRY_TLS_PORT:-}"
PIDFILE="$STATE/registry.pid"
BASE="http://127.0.0.1:$PORT"
URL="$BASE/apis/ccompat/v7"
TLS="$STATE/tls"

log() { echo "[registry] $*" >&2; }

ready() { curl -fsS -m 2 "$BASE/health/ready" >/dev/null 2>&1; }
tls_ready() { curl -fsS -m 2 --cacert "$TLS/ca.crt" "https://127.0.0.1:$TLS_PORT/health/ready" >/dev/null 2>&1; }

fetch() {
  if [ -f "$HOME_DIR/.complete" ]; then return; fi
  command -v mvn >/dev/null || { log "mvn not found (apt-get install maven)"; exit 1; }
  log "resolving Apicurio Registry $REGISTRY_VERSION from Maven Central into $HOME_DIR"
  local work; work="$(mktemp -d)"
  rm -rf "$HOME_DIR.tmp"; mkdir -p "$HOME_DIR.tmp"
  (cd "$work" && mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.6.1:unpack \
      -Dartifact="io.apicurio:apicurio-registry-app:$REGISTRY_VERSION:tar.gz:all" \
      -DoutputDirectory="$HOME_DIR.tmp" >"$work/mvn.log" 2>&1) || { cat "$work/mvn.log" >&2; exit 1; }
  # The tarball may wrap everything in one top-level directory: flatten it.
  local jar; jar="$(find "$HOME_DIR.tmp" -maxdepth 3 -name "apicurio-registry-app-*-runner.jar" | head -1)"
  [ -n "$jar" ] || { log "no *-runner.jar in the unpacked tarball"; exit 1; }
  local top; top="$(dirname "$jar")"
  rm -rf "$HOME_DIR"; mv "$top" "$HOME_DIR"; rm -rf "$HOME_DIR.tmp" "$work"
  touch "$HOME_DIR/.complete"
  log "cached $(du -sh "$HOME_DIR" | cut -f1) in $HOME_DIR"
}

# A test CA and a server certificate for 127.0.0.1 (once per state dir).
tls_files() {
  [ -f "$TLS/server.crt" ] && return
  if ! command -v openssl >/dev/null; then
    log "installing openssl"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  fi
  mkdir -p "$TLS"
  (cd "$TLS" &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kafka-pg-sink test CA" \
      -keyout ca.key -out ca.crt &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf &&
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile ext.cnf -out server.crt) >"$STATE/tls.log" 2>&1 || { cat "$STATE/tls.log" >&2; exit 1; }
  log "test CA in $TLS/ca.crt"
}

start() {
  fetch
  mkdir -p "$STATE"
  local tls_opts=()
  if [ -n "$TLS_PORT" ]; then
    tls_files
    tls_opts=(-Dquarkus.http.ssl-port="$TLS_PORT"
      -Dquarkus.http.ssl.certificate.files="$TLS/server.crt"
      -Dquarkus.http.ssl.certificate.key-files="$TLS/server.key")
  fi
  log "starting Apicurio Registry $REGISTRY_VERSION on 127.0.0.1:$PORT (state $STATE)"
  # Started from the state directory (nothing is written there with in-memory
  # storage, but a stray file lands there rather than in the caller's tree).
  cd "$STATE"
  nohup java -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dquarkus.http.port="$PORT" -Dquarkus.http.host=127.0.0.1 \
    -Dquarkus.management.enabled=false "${tls_opts[@]}" \
    -jar "$JAR" >>"$STATE/registry.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  cd - >/dev/null
  for _ in $(seq 1 240); do
    if ready && { [ -z "$TLS_PORT" ] || tls_ready; }; then
      log "ready at $URL${TLS_PORT:+ and https://127.0.0.1:$TLS_PORT} (pid $(cat "$PIDFILE"))"; return
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then tail -50 "$STATE/registry.log" >&2; exit 1; fi
    sleep 0.25
  done
  log "registry not ready after 60 s"; tail -50 "$STATE/registry.log" >&2; exit 1
}

ensure() {
  if ready; then
    if [ -n "$TLS_PORT" ] && ! tls_ready; then
      if [ -n "$(live_pid "$PIDFILE" "quarkus.http.port=$PORT")" ]; then log "restarting with https on $TLS_PORT"; stop_sig TERM; start; return; fi
      log "something else answers on $PORT without https on $TLS_PORT"; exit 1
    fi
    log "already ready at $URL"; fetch; return
  fi
  start
}

stop_sig() { stop_pidfile "$1" "$PIDFILE" "quarkus.http.port=$PORT"; }

cmd="${1:-ensure}"
case "$cmd" in
  fetch) fetch ;;
  ensure) ensure ;;
  start) start ;;
  stop) stop_sig TERM ;;
  kill) stop_sig KILL ;;
  restart) stop_sig TERM; start ;;
  status) ready && echo up || echo down ;;
  url) echo "$URL" ;;
  tls-url) [ -n "$TLS_PORT" ] || { log "REGISTRY_TLS_PORT is not set"; exit 2; }
    echo "https://127.0.0.1:$TLS_PORT/apis/ccompat/v7" ;;
  ca) echo "$TLS/ca.crt" ;;
  *) echo "usage: $0 [fetch|ensure|start|stop|kill|restart|status|url|tls-url|ca]" >&2; exit 2 ;;
esac
