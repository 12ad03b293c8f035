#!/usr/bin/env bash
# A single-machine Citus cluster (distributed PostgreSQL) for tests: a coordinator and two workers,
# run with Debian's PostgreSQL server binaries as the `postgres` OS user, in their own data dirs
# and ports; the main cluster on 5432 (scripts/postgres.sh), the CDC cluster on 5433 and the
# failover set on 5439-5441 (scripts/pg-failover.sh) are never touched.
#
#   scripts/citus.sh ensure          build Citus once from the vendored source into the cache (cold
#                                    cache: apt build deps, configure, make) or copy the cached build
#                                    into PostgreSQL's lib/extension dirs (warm cache); initdb + start
#                                    the three nodes; CREATE EXTENSION citus and register the nodes in
#                                    the `postgres` database. Idempotent (a second run takes ~1 s).
#   scripts/citus.sh url [coordinator|worker1|worker2] [DB]
#                                    postgres://postgres@127.0.0.1:PORT/DB (coordinator, postgres)
#   scripts/citus.sh deps            only the Debian packages (server; build deps on a cold cache):
#                                    apt is done before a background `ensure` builds
#   scripts/citus.sh createdb NAME   a database on all three nodes, extension created and nodes
#                                    registered in it; prints its coordinator URL. Idempotent.
#   scripts/citus.sh dropdb NAME     drops it on all three nodes (those that are up)
#   scripts/citus.sh stop-worker N   pg_ctl stop -m immediate on worker N (1 or 2): a crash
#   scripts/citus.sh start-worker N  start worker N again (waits until it answers)
#   scripts/citus.sh restart-coordinator [immediate|fast]   pg_ctl restart (default immediate)
#   scripts/citus.sh stop            stop all nodes (fast); data kept
#   scripts/citus.sh reset           stop all nodes (immediate) and delete the state dir
#   scripts/citus.sh status          JSON: each node up/pid/port, the coordinator's pg_dist_node and
#                                    the prepared transactions left on each node
# Machine-readable results on stdout; progress on stderr prefixed [citus].
#
# Env: CITUS_TARBALL (<repo>/../shared/vendor/citus-13.2.2.tar.gz: the only source used, never
#      fetched), KAFKA_PG_SINK_CACHE (~/.cache/kafka-pg-sink; the build is cached in
#      citus-13.2.2-pg<major>/), CITUS_STATE_DIR (/tmp/kafka-pg-sink-citus), CITUS_PORT (5444: the
#      coordinator; workers on +1 and +2), CITUS_PG_VERSION (newest in /usr/lib/postgresql),
#      CITUS_BUILD_JOBS (2), CITUS_WAIT_S (60)
#
# Ports: 5441 is pg-failover.sh's standby, so the coordinator defaults to 5444 (workers 5445, 5446).
#
# Server settings: Debian's defaults as scripts/postgres.sh leaves them (fsync and
# synchronous_commit on), plus shared_preload_libraries = 'citus', max_prepared_transactions = 100
# (Citus commits every multi-node write with two-phase commit), max_connections = 300 (the
# coordinator opens connections per worker for each session's multi-shard statements) and trust on
# loopback so the nodes reach each other without passwords (test only).
#
# Citus keeps its extension and node metadata per database: `createdb` creates the database and
# the extension on the workers first, then on the coordinator, where citus_set_coordinator_host
# and citus_add_node register the nodes (citus_add_node syncs the metadata to the workers, which
# needs the extension there already).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"
REPO="$(cd "$HERE/.." && pwd)"

CITUS_VERSION=13.2.2
TARBALL="${CITUS_TARBALL:-$REPO/../shared/vendor/citus-$CITUS_VERSION.tar.gz}"
STATE="${CITUS_STATE_DIR:-/tmp/kafka-pg-sink-citus}"
CPORT="${CITUS_PORT:-5444}"
JOBS="${CITUS_BUILD_JOBS:-2}"
WAIT_S="${CITUS_WAIT_S:-60}"
NODES=(coordinator worker1 worker2)
T0="$(date +%s%N)"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

log() { echo "[citus] $*" >&2; }
die() { log "$*"; exit 1; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

pg_version() {
  [ -n "${CITUS_PG_VERSION:-}" ] && { echo "$CITUS_PG_VERSION"; return; }
  ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1
}
PGV="$(pg_version)"
CACHE="${KAFKA_PG_SINK_CACHE:-$HOME/.cache/kafka-pg-sink}/citus-$CITUS_VERSION-pg$PGV"
bin() { echo "/usr/lib/postgresql/$PGV/bin/$1"; }

# Server-side commands run as the postgres OS user (initdb/postgres refuse root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_of() {
  case "$1" in
    coordinator) echo "$CPORT" ;;
    worker1) echo $((CPORT + 1)) ;;
    worker2) echo $((CPORT + 2)) ;;
    *) die "no node $1 (coordinator, worker1, worker2)" ;;
  esac
}
worker() { # worker N -> worker1|worker2
  case "${1:-}" in 1|worker1) echo worker1 ;; 2|worker2) echo worker2 ;; *) die "usage: worker number 1 or 2" ;; esac
}
datadir() { echo "$STATE/$1"; }

q() { # q PORT DB SQL -> unaligned, tuples only; fails (with the server's message) on error
  PGOPTIONS="-c client_min_messages=warning" psql -X -A -t -q -h 127.0.0.1 -p "$1" -U postgres -d "$2" -v ON_ERROR_STOP=1 -c "$3"
}
answers() { q "$1" postgres 'select 1' >/dev/null 2>&1; }

# A postmaster.pid left by a server that is gone (machine restored from a snapshot, SIGKILL) is
# removed: its number may now belong to another process.
pm_pid() { live_pid "$(datadir "$1")/postmaster.pid" "-D $(datadir "$1")"; }
running() { [ -n "$(pm_pid "$1")" ]; }

wait_answer() {
  local port="$1"
  for _ in $(seq 1 $((WAIT_S * 10))); do answers "$port" && return 0; sleep 0.1; done
  die "nothing answers on $port"
}

# ---- the build ----

install_server() {
  if [ -n "$PGV" ] && [ -x "$(bin postgres)" ]; then return; fi
  log "installing Debian postgresql"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-client >/dev/null
  PGV="$(pg_version)"
  CACHE="${KAFKA_PG_SINK_CACHE:-$HOME/.cache/kafka-pg-sink}/citus-$CITUS_VERSION-pg$PGV"
}

installed_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
missing() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" != "install ok installed" ]; }

# Build dependencies, only the missing ones. postgresql-server-dev-<major> is pinned to the
# installed server's version: the newest one would upgrade (and so restart) the running server
# package, and headers of the very server that loads the library are what it must be built
# against.
install_build_deps() {
  local want=() p server_ver
  for p in postgresql-server-dev-"$PGV" libkrb5-dev libssl-dev liblz4-dev libzstd-dev gcc make; do
    missing "$p" && want+=("$p")
  done
  [ ${#want[@]} -gt 0 ] || return 0
  server_ver="$(installed_version postgresql-"$PGV")"
  local pinned=()
  for p in "${want[@]}"; do
    if [ "$p" = "postgresql-server-dev-$PGV" ] && [ -n "$server_ver" ] \
      && apt-cache madison "$p" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep -qxF "$server_ver"; then
      pinned+=("$p=$server_ver")
    else
      pinned+=("$p")
    fi
  done
  log "installing build deps: ${pinned[*]}"
  $SUDO apt-get update -qq
  # Refuse a plan that would upgrade the server package under the running clusters.
  if [ -n "$server_ver" ] && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -s -y "${pinned[@]}" 2>/dev/null \
      | grep -qE "^Inst postgresql-$PGV "; then
    die "installing ${pinned[*]} would upgrade postgresql-$PGV $server_ver (and restart its clusters); install the build deps by hand"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pinned[@]}" >/dev/null
}

# Builds Citus from the vendored tarball and installs it into $CACHE/root (DESTDIR), then marks
# the cache complete. Only the tarball is used: nothing is downloaded.
build() {
  [ -f "$TARBALL" ] || die "Citus source not found: $TARBALL (set CITUS_TARBALL)"
  install_build_deps
  local pgc; pgc="$(bin pg_config)"
  [ -x "$pgc" ] || die "$pgc missing (postgresql-server-dev-$PGV)"
  local t; t="$(date +%s%N)"
  local work; work="$(mktemp -d "${TMPDIR:-/tmp}/citus-build.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  log "building Citus $CITUS_VERSION for PostgreSQL $("$pgc" --version | awk '{print $2}') in $work (make -j$JOBS)"
  tar -xzf "$TARBALL" -C "$work"
  local src="$work/citus-$CITUS_VERSION"
  # Debian's PostgreSQL 15 minor releases export have_createdb_privilege, which Citus 13.2.2's PG15
  # compatibility header also defines as static: rename the header's copy (see
  # ../shared/vendor/README.md). Only when the server's header declares the function.
  if grep -q 'have_createdb_privilege' "$("$pgc" --includedir-server)/commands/dbcommands.h" 2>/dev/null; then
    sed -i 's/^have_createdb_privilege(void)$/citus_pg15_have_createdb_privilege_unused(void)/' \
      "$src/src/include/pg_version_compat.h"
  fi
  (cd "$src" && PG_CONFIG="$pgc" ./configure --without-libcurl >"$work/configure.log" 2>&1) \
    || { tail -40 "$work/configure.log" >&2; die "configure failed ($work kept)"; }
  (cd "$src" && make -j"$JOBS" >"$work/make.log" 2>&1) \
    || { grep -E 'error|Error' "$work/make.log" | head -20 >&2; tail -20 "$work/make.log" >&2; trap - EXIT; die "make failed (log: $work/make.log)"; }
  rm -rf "$CACHE.tmp"; mkdir -p "$CACHE.tmp/root"
  (cd "$src" && make install DESTDIR="$CACHE.tmp/root" >"$work/install.log" 2>&1) \
    || { tail -20 "$work/install.log" >&2; die "make install failed"; }
  # Headers are for building other extensions against Citus: not needed to run it.
  rm -rf "$CACHE.tmp/root/usr/include"
  "$pgc" --version >"$CACHE.tmp/built-for"
  (cd "$CACHE.tmp/root" && find . -type f | sort) >"$CACHE.tmp/files"
  rm -rf "$CACHE"; mv "$CACHE.tmp" "$CACHE"; touch "$CACHE/.complete"
  rm -rf "$work"; trap - EXIT
  log "built and cached in $(ms_since "$t") ms: $(wc -l <"$CACHE/files") files in $CACHE"
}

# Copies the cached build into PostgreSQL's dirs: only files that differ, each by rename (a
# running server may have the old library mapped; overwriting it in place could crash it).
install_cached() {
  local d differ=""
  # One diff per tree first: a warm cache that is already installed costs no per-file work.
  for d in "usr/lib/postgresql/$PGV" "usr/share/postgresql/$PGV"; do
    [ -d "$CACHE/root/$d" ] || continue
    differ+="$(diff -rq "$CACHE/root/$d" "/$d" 2>&1 | grep -E "^(Files |Only in $CACHE/)" || true)"
  done
  [ -n "$differ" ] || return 0
  # cp --remove-destination writes each file as a new inode: a running server keeps the old
  # library it has mapped (overwriting it in place could crash it).
  # No --preserve: existing directories keep their modes, new files get the source's modes
  # under the umask.
  for d in "usr/lib/postgresql/$PGV" "usr/share/postgresql/$PGV"; do
    [ -d "$CACHE/root/$d" ] || continue
    $SUDO mkdir -p "/$d"
    $SUDO cp -R --remove-destination "$CACHE/root/$d/." "/$d/"
  done
  log "installed $(wc -l <"$CACHE/files") files from $CACHE"
}

ensure_citus() {
  if [ ! -f "$CACHE/.complete" ]; then
    build
  fi
  install_cached
}

# ---- the cluster ----

create_node() {
  local node="$1" d; d="$(datadir "$1")"
  log "initdb $node ($d, port $(port_of "$node"))"
  rm -rf "$d"
  as_pg "$(bin initdb)" -D "$d" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >"$STATE/initdb-$node.log" 2>&1 \
    || { cat "$STATE/initdb-$node.log" >&2; die "initdb failed"; }
  cat <<CONF | as_pg tee -a "$d/postgresql.conf" >/dev/null
# --- kafka-pg-sink Citus test cluster (scripts/citus.sh) ---
listen_addresses = '127.0.0.1'
port = $(port_of "$node")
unix_socket_directories = '$STATE'
shared_preload_libraries = 'citus'
max_prepared_transactions = 100
max_connections = 300
shared_buffers = 128MB
CONF
  cat <<'HBA' | as_pg tee "$d/pg_hba.conf" >/dev/null
local   all             all                     trust
host    all             all     127.0.0.1/32    trust
local   replication     all                     trust
host    replication     all     127.0.0.1/32    trust
HBA
}

pg_start() {
  local node="$1" d port; d="$(datadir "$1")"; port="$(port_of "$1")"
  if ! running "$node"; then
    port_open "$port" && die "port $port is taken by another process (set CITUS_PORT)"
    # fd 9 (the ensure lock) closed: a server that kept it would hold the lock.
    as_pg "$(bin pg_ctl)" -D "$d" -l "$STATE/$node.log" -w -t "$WAIT_S" start >/dev/null 9>&- \
      || { tail -30 "$STATE/$node.log" >&2; die "$node did not start"; }
  fi
  wait_answer "$port"
}

pg_stop() { # pg_stop NODE MODE
  local node="$1" mode="$2"
  running "$node" || return 0
  as_pg "$(bin pg_ctl)" -D "$(datadir "$node")" -m "$mode" -w -t "$WAIT_S" stop >/dev/null
}

# The extension in database DB on NODE (idempotent).
ensure_extension() {
  local node="$1" db="$2" port; port="$(port_of "$1")"
  if [ "$(q "$port" "$db" "select count(*) from pg_extension where extname = 'citus'")" = 0 ]; then
    q "$port" "$db" "create extension if not exists citus" >/dev/null
  fi
}

# The node registration in database DB, on the coordinator (idempotent). citus_add_node syncs
# the metadata to the worker, so the extension must exist there first.
register_nodes() {
  local db="$1" node port have
  have="$(q "$CPORT" "$db" "select string_agg(nodeport::text, ' ') from pg_dist_node")"
  if [[ " $have " != *" $CPORT "* ]]; then
    q "$CPORT" "$db" "select citus_set_coordinator_host('127.0.0.1', $CPORT)" >/dev/null
  fi
  for node in worker1 worker2; do
    port="$(port_of "$node")"
    if [[ " $have " != *" $port "* ]]; then
      q "$CPORT" "$db" "select citus_add_node('127.0.0.1', $port)" >/dev/null
    fi
  done
}

# Runs "$@ NODE" for the three nodes at once; fails if any failed.
on_all_nodes() {
  local node pids=() rc=0 p
  for node in "${NODES[@]}"; do "$@" "$node" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return "$rc"
}

ensure() {
  # Parallel callers (test processes) take turns: one builds/starts, the others find it done.
  mkdir -p "$(dirname "$STATE")"
  exec 9>"$STATE.lock"
  flock 9
  install_server
  ensure_citus
  mkdir -p "$STATE"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$STATE"; fi
  local node
  for node in "${NODES[@]}"; do
    [ -f "$(datadir "$node")/PG_VERSION" ] || create_node "$node"
    pg_start "$node"
  done
  extension_on() { ensure_extension "$1" postgres; }
  on_all_nodes extension_on || die "CREATE EXTENSION citus failed"
  register_nodes postgres
  log "ready in $(ms_since "$T0") ms: coordinator 127.0.0.1:$CPORT, workers $((CPORT + 1)), $((CPORT + 2))"
}

valid_db() { [[ "$1" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "database names here are lower-case identifiers: $1"; }

createdb() {
  local db="$1" node
  valid_db "$db"
  for node in "${NODES[@]}"; do
    answers "$(port_of "$node")" || die "$node ($(port_of "$node")) does not answer (scripts/citus.sh ensure)"
  done
  # Database and extension on the three nodes at once, then the registration.
  db_on() {
    local port; port="$(port_of "$1")"
    if [ "$(q "$port" postgres "select count(*) from pg_database where datname = '$db'")" = 0 ]; then
      q "$port" postgres "create database \"$db\"" >/dev/null
    fi
    ensure_extension "$1" "$db"
  }
  on_all_nodes db_on || die "creating $db failed"
  register_nodes "$db"
  url coordinator "$db"
}

dropdb() {
  local db="$1" node port
  valid_db "$db"
  for node in coordinator worker1 worker2; do
    port="$(port_of "$node")"
    answers "$port" || { log "$node is down: $db not dropped there"; continue; }
    q "$port" postgres "drop database if exists \"$db\" with (force)" >/dev/null
  done
}

url() { echo "postgres://postgres@127.0.0.1:$(port_of "${1:-coordinator}")/${2:-postgres}"; }

node_json() {
  local node="$1" port pid; port="$(port_of "$1")"; pid="$(pm_pid "$node")"
  if ! answers "$port"; then
    printf '{"name":"%s","port":%s,"up":false,"pid":%s}' "$node" "$port" "${pid:-null}"
    return
  fi
  q "$port" postgres "select json_build_object('name','$node','port',$port,'up',true,'pid',${pid:-null},
    'prepared_xacts',(select count(*) from pg_prepared_xacts),
    'citus',(select extversion from pg_extension where extname = 'citus'))"
}

status() {
  local nodes=() n dist=null
  for n in "${NODES[@]}"; do nodes+=("$(node_json "$n")"); done
  if answers "$CPORT"; then
    dist="$(q "$CPORT" postgres "select coalesce(json_agg(json_build_object('port',nodeport,'role',noderole,
      'group',groupid,'active',isactive,'has_metadata',hasmetadata) order by groupid),'[]') from pg_dist_node" 2>/dev/null || echo null)"
  fi
  local IFS=,
  printf '{"state_dir":"%s","cache":"%s","nodes":[%s],"pg_dist_node":%s}\n' "$STATE" \
    "$([ -f "$CACHE/.complete" ] && echo "$CACHE" || echo)" "${nodes[*]}" "$dist"
}

stop_all() {
  local mode="$1" node
  for node in worker2 worker1 coordinator; do pg_stop "$node" "$mode"; done
}

cmd="${1:-ensure}"; shift || true
case "$cmd" in
  ensure) ensure ;;
  deps) install_server; [ -f "$CACHE/.complete" ] || install_build_deps ;;
  url) url "${1:-coordinator}" "${2:-postgres}" ;;
  createdb) [ $# -ge 1 ] || die "usage: createdb NAME"; createdb "$1" ;;
  dropdb) [ $# -ge 1 ] || die "usage: dropdb NAME"; dropdb "$1" ;;
  stop-worker) pg_stop "$(worker "${1:-}")" immediate; log "stopped $(worker "$1") (immediate)" ;;
  start-worker) pg_start "$(worker "${1:-}")"; log "started $(worker "$1")" ;;
  restart-coordinator)
    mode="${1:-immediate}"
    if running coordinator; then
      as_pg "$(bin pg_ctl)" -D "$(datadir coordinator)" -l "$STATE/coordinator.log" -m "$mode" -w -t "$WAIT_S" restart >/dev/null \
        || { tail -30 "$STATE/coordinator.log" >&2; die "coordinator did not restart"; }
    fi
    pg_start coordinator
    log "coordinator restarted ($mode)" ;;
  stop) stop_all fast ;;
  reset) stop_all immediate; rm -rf "$STATE"; log "removed $STATE" ;;
  status) status ;;
  *) echo "usage: $0 [ensure|url [NODE] [DB]|createdb NAME|dropdb NAME|stop-worker N|start-worker N|restart-coordinator [immediate|fast]|stop|reset|status]" >&2; exit 2 ;;
esac
