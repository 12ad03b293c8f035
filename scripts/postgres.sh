#!/usr/bin/env bash
# Ensure a PostgreSQL server answers at $DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres). Idempotent:
#   1. if something already answers there, use it;
#   2. else install Debian's `postgresql` if no server binary exists,
#      create/start the cluster, allow trusted TCP from loopback (test only).
# Usage: scripts/postgres.sh [ensure|stop|restart]
set -euo pipefail

DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PGPORT_WANTED="${PGPORT_WANTED:-5432}"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

log() { echo "[postgres] $*" >&2; }

answers() { psql "$DATABASE_URL" -XAtqc 'select 1' >/dev/null 2>&1; }

server_version() {
  ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1
}

install_server() {
  if [ -n "$(server_version)" ] && [ -x "/usr/lib/postgresql/$(server_version)/bin/postgres" ]; then
    return
  fi
  log "installing Debian postgresql"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-client >/dev/null
}

ensure() {
  if ! command -v psql >/dev/null; then
    log "installing postgresql-client"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-client >/dev/null
  fi
  if answers; then log "reachable at ${DATABASE_URL%%@*}@…"; return; fi
  install_server
  local ver; ver="$(server_version)"
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$ver main"; then
    log "creating cluster $ver/main"
    $SUDO pg_createcluster "$ver" main --port "$PGPORT_WANTED" >/dev/null
  fi
  local conf="/etc/postgresql/$ver/main"
  # Test environment only: trust loopback TCP so DATABASE_URL needs no password.
  if ! grep -q 'kafka-pg-sink test access' "$conf/pg_hba.conf"; then
    $SUDO sed -i 's/^\(host\s.*\)scram-sha-256$/\1trust/; s/^\(host\s.*\)md5$/\1trust/' "$conf/pg_hba.conf"
    echo "# kafka-pg-sink test access" | $SUDO tee -a "$conf/pg_hba.conf" >/dev/null
  fi
  # Parallel tests each open a pool; the default 100 connections is tight.
  if ! grep -q '^max_connections = 400' "$conf/postgresql.conf"; then
    echo "max_connections = 400" | $SUDO tee -a "$conf/postgresql.conf" >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
    log "starting cluster $ver/main"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  else
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  fi
  for _ in $(seq 1 60); do answers && { log "ready"; return; }; sleep 0.5; done
  log "PostgreSQL did not become reachable at DATABASE_URL"; exit 1
}

cmd="${1:-ensure}"
ver="$(server_version || true)"
case "$cmd" in
  ensure) ensure ;;
  stop) $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main stop -m fast ;;
  restart) $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main restart -m fast ;;
  *) echo "usage: $0 [ensure|stop|restart]" >&2; exit 2 ;;
esac
