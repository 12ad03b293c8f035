#!/usr/bin/env bash
# A PostgreSQL primary with an ASYNCHRONOUS streaming standby, behind one stable front address
# that can be switched to the promoted standby: the "database failover" of issue 13.
# Uses the installed Debian PostgreSQL server binaries as the `postgres` OS user, in its own data
# dirs and ports; the main cluster on 5432 is never touched.
#
#   scripts/pg-failover.sh ensure      create (initdb, pg_basebackup -R) + start primary, standby and
#                                      the front proxy -> primary; idempotent. A set left promoted by
#                                      an earlier failover is rebuilt from scratch.
#   scripts/pg-failover.sh status      JSON: front target, each node's role, port, up, lsn, lags
#   scripts/pg-failover.sh freeze-replication [--no-wait]
#                                      wait until the standby has replayed everything committed so far
#                                      (unless --no-wait), then stop WAL streaming to it: every commit
#                                      on the primary after this returns is LOST on failover. JSON.
#   scripts/pg-failover.sh unfreeze-replication   stream again (the standby catches up)
#   scripts/pg-failover.sh kill-primary  SIGKILL the primary's postmaster and all its children
#   scripts/pg-failover.sh promote     promote the standby, then point the front at it (dropping the
#                                      front's open connections). JSON with timings.
#   scripts/pg-failover.sh front primary|standby|none|PORT   re-point the front (drops connections)
#   scripts/pg-failover.sh lsn PORT    the server's current LSN (pg_current_wal_lsn on a primary,
#                                      pg_last_wal_replay_lsn on a standby), bare text
#   scripts/pg-failover.sh url [front|primary|standby]   postgres://postgres@127.0.0.1:PORT/postgres
#   scripts/pg-failover.sh stop        stop both servers (fast) and the proxy; data kept
#   scripts/pg-failover.sh reset       stop everything (immediate) and delete the state dir
# Machine-readable results on stdout; progress on stderr prefixed [pgfo].
#
# Env: PGFO_DIR (/tmp/kafka-pg-sink-pgfo), PGFO_PRIMARY_PORT (5440), PGFO_STANDBY_PORT (5441),
#      PGFO_FRONT_PORT (5439), PGFO_PG_VERSION (newest in /usr/lib/postgresql), PGFO_WAIT_S (60)
#
# Replication: primary_conninfo from pg_basebackup -R, a physical slot (pgfo_standby) so the
# primary keeps WAL the standby has not received, synchronous_commit=on and an EMPTY
# synchronous_standby_names: a commit returns once it is flushed on the primary alone.
# freeze-replication sets the standby's primary_conninfo to '' and reloads: the walreceiver exits
# and is not restarted, so nothing written after that point can reach the standby (deterministic,
# unlike SIGSTOPping the walreceiver, whose socket buffer would still deliver queued WAL after
# SIGCONT). unfreeze-replication restores the saved conninfo.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"
DIR="${PGFO_DIR:-/tmp/kafka-pg-sink-pgfo}"
PPORT="${PGFO_PRIMARY_PORT:-5440}"
SPORT="${PGFO_STANDBY_PORT:-5441}"
FPORT="${PGFO_FRONT_PORT:-5439}"
WAIT_S="${PGFO_WAIT_S:-60}"
SLOT=pgfo_standby
T0="$(date +%s%N)"

log() { echo "[pgfo] $*" >&2; }
die() { log "$*"; exit 1; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

pg_version() {
  [ -n "${PGFO_PG_VERSION:-}" ] && { echo "$PGFO_PG_VERSION"; return; }
  ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1
}

install_server() {
  local v; v="$(pg_version)"
  if [ -n "$v" ] && [ -x "/usr/lib/postgresql/$v/bin/postgres" ]; then return; fi
  log "installing Debian postgresql"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
}

bin() { echo "/usr/lib/postgresql/$(pg_version)/bin/$1"; }

# Server-side commands run as the postgres OS user (initdb/postgres refuse root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

q() { # q PORT SQL  -> unaligned, tuples only; fails if the server does not answer
  "$(bin psql)" -X -A -t -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$2" 2>/dev/null
}
answers() { q "$1" 'select 1' >/dev/null 2>&1; }
in_recovery() { [ "$(q "$1" 'select pg_is_in_recovery()')" = t ]; }

datadir() { echo "$DIR/$1"; }
port_of() { case "$1" in primary) echo "$PPORT" ;; standby) echo "$SPORT" ;; *) echo "$1" ;; esac; }
# A postmaster.pid left by a server that is gone (the machine was restored, or SIGKILLed) is
# removed here: its number may now belong to another process, which pg_ctl would signal and
# postgres would take for a running server.
pm_pid() { live_pid "$(datadir "$1")/postmaster.pid" "-D $(datadir "$1")"; }
running() { [ -n "$(pm_pid "$1")" ]; }

wait_answer() {
  local port="$1"
  for _ in $(seq 1 $((WAIT_S * 10))); do answers "$port" && return 0; sleep 0.1; done
  die "nothing answers on $port"
}

pg_start() {
  local node="$1" d; d="$(datadir "$1")"
  running "$node" && return
  as_pg "$(bin pg_ctl)" -D "$d" -l "$DIR/$node.log" -w -t "$WAIT_S" -o "-p $(port_of "$node")" start >/dev/null \
    || { tail -30 "$DIR/$node.log" >&2; die "$node did not start"; }
}

create_primary() {
  local d; d="$(datadir primary)"
  log "initdb primary ($d, port $PPORT)"
  as_pg "$(bin initdb)" -D "$d" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  cat >>"$d/postgresql.conf" <<CONF
# --- kafka-pg-sink failover test set (scripts/pg-failover.sh) ---
listen_addresses = '127.0.0.1'
port = $PPORT
unix_socket_directories = '$DIR'
max_connections = 200
shared_buffers = 64MB
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
hot_standby = on
wal_receiver_status_interval = 1s
wal_sender_timeout = 10s
wal_receiver_timeout = 10s
# asynchronous replication: a commit waits for the local WAL flush only
synchronous_commit = on
synchronous_standby_names = ''
CONF
  # trust on loopback for normal and replication connections (initdb -A trust already does; explicit)
  cat >"$d/pg_hba.conf" <<'HBA'
local   all             all                     trust
host    all             all     127.0.0.1/32    trust
local   replication     all                     trust
host    replication     all     127.0.0.1/32    trust
HBA
  pg_start primary
  q "$PPORT" "select pg_create_physical_replication_slot('$SLOT')" >/dev/null
}

create_standby() {
  local d; d="$(datadir standby)"
  log "pg_basebackup -R standby ($d, port $SPORT)"
  rm -rf "$d"
  as_pg "$(bin pg_basebackup)" -h 127.0.0.1 -p "$PPORT" -U postgres -D "$d" -R -X stream -c fast \
    -S "$SLOT" --no-sync >"$DIR/basebackup.log" 2>&1 || { cat "$DIR/basebackup.log" >&2; die "pg_basebackup failed"; }
  # -R wrote standby.signal and primary_conninfo/primary_slot_name into postgresql.auto.conf; a
  # shorter conninfo (later lines win) names the standby in pg_stat_replication and is what
  # unfreeze-replication restores.
  echo "host=127.0.0.1 port=$PPORT user=postgres application_name=pgfo_standby" >"$DIR/standby.conninfo"
  printf "port = %s\nprimary_conninfo = '%s'\n" "$SPORT" "$(cat "$DIR/standby.conninfo")" \
    | as_pg tee -a "$d/postgresql.auto.conf" >/dev/null
  pg_start standby
}

# ---- front proxy ----
proxy_pid() { live_pid "$DIR/front.pid" "pgfo-proxy.py $FPORT"; }
proxy_running() { [ -n "$(proxy_pid)" ]; }

front_set() { # front_set PORT|none
  echo "$1" >"$DIR/front.target"
  if proxy_running; then
    kill -HUP "$(proxy_pid)"
  else
    port_open "$FPORT" && die "front port $FPORT is taken by another process"
    log "starting front proxy on 127.0.0.1:$FPORT"
    rm -f "$DIR/front.applied"
    setsid nohup python3 "$HERE/pgfo-proxy.py" "$FPORT" "$DIR/front.target" "$DIR/front.applied" \
      >>"$DIR/front.log" 2>&1 </dev/null &
    echo $! >"$DIR/front.pid"
    for _ in $(seq 1 100); do port_open "$FPORT" && break; sleep 0.05; done
  fi
  for _ in $(seq 1 100); do
    [ "$(cat "$DIR/front.applied" 2>/dev/null)" = "$1" ] && port_open "$FPORT" && return 0
    sleep 0.05
  done
  die "front proxy did not switch to $1"
}
front_target() { cat "$DIR/front.applied" 2>/dev/null || echo none; }

ensure() {
  install_server
  mkdir -p "$DIR"
  chown postgres: "$DIR" 2>/dev/null || true
  # A set that already failed over (standby promoted) is rebuilt: ensure means "fresh topology".
  if [ -d "$(datadir standby)" ] && [ ! -f "$(datadir standby)/standby.signal" ]; then
    log "standby was promoted by an earlier failover; rebuilding"
    reset_all
    mkdir -p "$DIR"; chown postgres: "$DIR" 2>/dev/null || true
  fi
  if [ ! -f "$(datadir primary)/PG_VERSION" ]; then rm -rf "$(datadir primary)" "$(datadir standby)"; create_primary; fi
  pg_start primary
  wait_answer "$PPORT"
  if [ ! -f "$(datadir standby)/PG_VERSION" ]; then create_standby; fi
  pg_start standby
  wait_answer "$SPORT"
  # An earlier freeze-replication is undone.
  if [ "$(q "$SPORT" 'show primary_conninfo')" = "" ]; then unfreeze; fi
  front_set "$PPORT"
  wait_streaming
  log "ready in $(ms_since "$T0") ms: front 127.0.0.1:$FPORT -> primary $PPORT, standby $SPORT streaming"
}

wait_streaming() {
  for _ in $(seq 1 $((WAIT_S * 10))); do
    [ "$(q "$SPORT" "select status from pg_stat_wal_receiver")" = streaming ] && return 0
    sleep 0.1
  done
  die "standby is not streaming"
}

# The timeline in force: a promoted server's first checkpoint may not have run yet, so read it
# from the current WAL file name rather than from pg_control.
TLI_SQL="case when pg_is_in_recovery() then (select timeline_id from pg_control_checkpoint())
  else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end"

lsn_of() { # current LSN of the server on PORT
  q "$1" "select case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end"
}

node_json() {
  local node="$1" port; port="$(port_of "$1")"
  if ! answers "$port"; then
    printf '{"name":"%s","port":%s,"up":false,"pid":%s}' "$node" "$port" "$(running "$node" && pm_pid "$node" || echo null)"
    return
  fi
  q "$port" "select json_build_object('name','$node','port',$port,'up',true,'pid',$(pm_pid "$node"),
    'role', case when pg_is_in_recovery() then 'standby' else 'primary' end,
    'timeline', $TLI_SQL,
    'lsn', case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end,
    'receive_lsn', pg_last_wal_receive_lsn(),
    'replay_lsn', pg_last_wal_replay_lsn(),
    'wal_receiver', (select status from pg_stat_wal_receiver),
    'replay_delay_s', case when pg_is_in_recovery() then extract(epoch from now() - pg_last_xact_replay_timestamp()) end,
    'replicas', (select coalesce(json_agg(json_build_object('state',state,'sync_state',sync_state,
                 'sent_lsn',sent_lsn,'replay_lsn',replay_lsn,
                 'replay_lag_bytes',pg_wal_lsn_diff(pg_current_wal_lsn(),replay_lsn))),'[]'::json)
                 from pg_stat_replication where not pg_is_in_recovery()))"
}

status() {
  local lag=null pl sl
  if answers "$PPORT" && answers "$SPORT" && ! in_recovery "$PPORT" && in_recovery "$SPORT"; then
    pl="$(lsn_of "$PPORT")"; sl="$(lsn_of "$SPORT")"
    lag="$(q "$PPORT" "select pg_wal_lsn_diff('$pl','$sl')::bigint")"
  fi
  printf '{"front":{"port":%s,"target":"%s","proxy":%s},"replay_lag_bytes":%s,"frozen":%s,"nodes":[%s,%s]}\n' \
    "$FPORT" "$(front_target)" "$(proxy_running && echo true || echo false)" "$lag" \
    "$([ -f "$DIR/frozen" ] && echo true || echo false)" "$(node_json primary)" "$(node_json standby)"
}

freeze() {
  local wait=1
  [ "${1:-}" = "--no-wait" ] && wait=0
  answers "$SPORT" || die "standby is not up"
  local t; t="$(date +%s%N)"
  if [ "$wait" = 1 ] && answers "$PPORT"; then
    local target; target="$(q "$PPORT" 'select pg_current_wal_lsn()')"
    for _ in $(seq 1 $((WAIT_S * 20))); do
      [ "$(q "$SPORT" "select pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '$target') >= 0")" = t ] && break
      sleep 0.05
    done
  fi
  q "$SPORT" "alter system set primary_conninfo = ''" >/dev/null
  q "$SPORT" "select pg_reload_conf()" >/dev/null
  for _ in $(seq 1 $((WAIT_S * 20))); do
    [ -z "$(q "$SPORT" 'select pid from pg_stat_wal_receiver')" ] && break
    sleep 0.05
  done
  [ -z "$(q "$SPORT" 'select pid from pg_stat_wal_receiver')" ] || die "walreceiver still running"
  touch "$DIR/frozen"
  printf '{"frozen":true,"standby_receive_lsn":"%s","standby_replay_lsn":"%s","primary_lsn":"%s","ms":%s}\n' \
    "$(q "$SPORT" 'select pg_last_wal_receive_lsn()')" "$(q "$SPORT" 'select pg_last_wal_replay_lsn()')" \
    "$(answers "$PPORT" && lsn_of "$PPORT" || echo)" "$(ms_since "$t")"
}

unfreeze() {
  local ci; ci="$(cat "$DIR/standby.conninfo")"
  q "$SPORT" "alter system set primary_conninfo = '${ci//\'/\'\'}'" >/dev/null
  q "$SPORT" "select pg_reload_conf()" >/dev/null
  rm -f "$DIR/frozen"
  wait_streaming
  log "replication resumed"
}

# SIGKILL a node's postmaster and every process it started (a crashed machine, not a clean stop).
kill_node() {
  local node="$1" pm; pm="$(pm_pid "$node")"
  [ -n "$pm" ] || { log "$node is not running"; return 0; }
  local kids; kids="$(ps -o pid= --ppid "$pm" | tr -d ' ' | tr '\n' ' ')"
  # shellcheck disable=SC2086
  kill -KILL "$pm" $kids 2>/dev/null || true
  for p in $pm $kids; do while kill -0 "$p" 2>/dev/null; do sleep 0.02; done; done
  log "SIGKILLed $node (postmaster $pm and ${kids:-no} children)"
}

promote() {
  local t; t="$(date +%s%N)"
  answers "$SPORT" || die "standby is not up"
  if in_recovery "$SPORT"; then
    as_pg "$(bin pg_ctl)" -D "$(datadir standby)" -w -t "$WAIT_S" promote >/dev/null
  fi
  for _ in $(seq 1 $((WAIT_S * 20))); do in_recovery "$SPORT" || break; sleep 0.05; done
  in_recovery "$SPORT" && die "standby did not leave recovery"
  local tp; tp="$(ms_since "$t")"
  front_set "$SPORT"
  printf '{"promoted":"standby","port":%s,"lsn":"%s","timeline":%s,"promote_ms":%s,"ms":%s}\n' "$SPORT" \
    "$(lsn_of "$SPORT")" "$(q "$SPORT" "select $TLI_SQL")" "$tp" "$(ms_since "$t")"
}

stop_all() {
  local mode="$1" node
  if proxy_running; then kill -TERM "$(proxy_pid)" 2>/dev/null || true; fi
  rm -f "$DIR/front.pid"
  for node in standby primary; do
    if running "$node"; then
      as_pg "$(bin pg_ctl)" -D "$(datadir "$node")" -m "$mode" -w -t "$WAIT_S" stop >/dev/null 2>&1 || kill_node "$node"
    fi
  done
}

reset_all() {
  [ -d "$DIR" ] || return 0
  stop_all immediate
  rm -rf "$DIR"
  log "removed $DIR"
}

cmd="${1:-ensure}"; shift || true
case "$cmd" in
  ensure) ensure ;;
  status) status ;;
  freeze-replication) freeze "${1:-}" ;;
  unfreeze-replication) unfreeze ;;
  kill-primary) kill_node primary ;;
  kill-standby) kill_node standby ;;
  promote) promote ;;
  front)
    case "${1:-}" in
      primary) front_set "$PPORT" ;; standby) front_set "$SPORT" ;; none) front_set none ;;
      [0-9]*) front_set "$1" ;; *) die "usage: front primary|standby|none|PORT" ;;
    esac ;;
  lsn) [ $# -ge 1 ] || die "usage: lsn PORT"; lsn_of "$(port_of "$1")" ;;
  url) echo "postgres://postgres@127.0.0.1:$(case "${1:-front}" in front) echo "$FPORT" ;; *) port_of "$1" ;; esac)/postgres" ;;
  stop) stop_all fast ;;
  reset) reset_all ;;
  *) echo "usage: $0 [ensure|status|freeze-replication [--no-wait]|unfreeze-replication|kill-primary|promote|front TARGET|lsn PORT|url [front|primary|standby]|stop|reset]" >&2; exit 2 ;;
esac
