#!/usr/bin/env bash
# PgBouncer in front of the dev Postgres (127.0.0.1:5432), for tests/pooler.rs:
# one pooler per pool mode, each on its own port, every database passed through.
#
#   scripts/pgbouncer.sh ensure [session|transaction]   install (Debian) if missing,
#                                      start if not answering; idempotent
#   scripts/pgbouncer.sh url session|transaction DB      postgres://postgres@127.0.0.1:PORT/DB
#   scripts/pgbouncer.sh log session|transaction        the pooler's log file (its logins)
#   scripts/pgbouncer.sh stop          stop every pooler this script started
#
# Not 6432: Debian's package may start its own pooler there on install.
# Env: PGBOUNCER_DIR (/tmp/kafka-pg-sink-pgbouncer), PGBOUNCER_SESSION_PORT (6442),
#      PGBOUNCER_TRANSACTION_PORT (6443). Test only: trust authentication.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"
DIR="${PGBOUNCER_DIR:-/tmp/kafka-pg-sink-pgbouncer}"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

log() { echo "[pgbouncer] $*" >&2; }

port_of() {
  case "$1" in
    session) echo "${PGBOUNCER_SESSION_PORT:-6442}" ;;
    transaction) echo "${PGBOUNCER_TRANSACTION_PORT:-6443}" ;;
    *) log "pool mode must be session or transaction, not '$1'"; exit 2 ;;
  esac
}

install() {
  command -v pgbouncer >/dev/null && return
  log "installing Debian pgbouncer"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq pgbouncer >/dev/null
}

# PgBouncer refuses to run as root: it runs as the `postgres` user the
# server package made.
as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else $SUDO runuser -u postgres -- "$@"; fi
}

ensure_one() {
  local mode="$1" port dir
  port="$(port_of "$mode")"
  dir="$DIR/$mode"
  if port_open "$port"; then log "$mode pooling on 127.0.0.1:$port"; return; fi
  install
  $SUDO mkdir -p "$dir"
  $SUDO chown postgres "$DIR" "$dir"
  # sqlx sends extra_float_digits at startup, which PgBouncer must be told
  # to pass over; DISCARD ALL (the default reset) ends a client's session.
  as_postgres tee "$dir/pgbouncer.ini" >/dev/null <<INI
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = $mode
max_client_conn = 200
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
INI
  echo '"postgres" ""' | as_postgres tee "$dir/users.txt" >/dev/null
  log "starting $mode pooling on 127.0.0.1:$port"
  as_postgres pgbouncer -d "$dir/pgbouncer.ini"
  for _ in $(seq 1 100); do
    port_open "$port" && return
    sleep 0.1
  done
  tail -20 "$dir/pgbouncer.log" >&2 || true
  log "pgbouncer ($mode) did not listen on $port"
  exit 1
}

stop() {
  local mode pid
  for mode in session transaction; do
    pid="$(live_pid "$DIR/$mode/pgbouncer.pid" pgbouncer)"
    [ -n "$pid" ] && $SUDO kill "$pid" 2>/dev/null || true
  done
}

case "${1:-ensure}" in
  ensure)
    if [ $# -ge 2 ]; then ensure_one "$2"; else ensure_one session; ensure_one transaction; fi ;;
  url) echo "postgres://postgres@127.0.0.1:$(port_of "${2:?pool mode}")/${3:?database}" ;;
  log) port_of "${2:?pool mode}" >/dev/null; echo "$DIR/$2/pgbouncer.log" ;;
  stop) stop ;;
  *) echo "usage: $0 ensure [session|transaction] | url MODE DB | log MODE | stop" >&2; exit 2 ;;
esac
