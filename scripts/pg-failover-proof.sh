#!/usr/bin/env bash
# Proof of scripts/pg-failover.sh: commits acknowledged by the primary after replication was cut
# are LOST when the asynchronous standby is promoted; commits it had replayed survive; the front
# address follows the promotion. Prints one JSON line; exit 1 if the outcome differs.
#   scripts/pg-failover-proof.sh [ROWS_BEFORE=200] [ROWS_AFTER=100]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PGFO="$HERE/pg-failover.sh"
BEFORE="${1:-200}"
AFTER="${2:-100}"
log() { echo "[pgfo-proof] $*" >&2; }
now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }

t_all="$(now)"
"$PGFO" reset
t="$(now)"; "$PGFO" ensure; t_ensure="$(ms "$t")"
FRONT="$("$PGFO" url front)"
psql_front() { psql "$FRONT" -X -A -t -q -v ON_ERROR_STOP=1 "$@"; }

psql_front -c "create table proof(id int primary key, phase text not null, at timestamptz default now())"
# One autocommit INSERT per client call: a row counts as acknowledged when its psql returned 0.
insert_rows() { # FROM TO PHASE -> number acknowledged
  local ok=0 i
  for i in $(seq "$1" "$2"); do
    psql_front -c "insert into proof(id, phase) values ($i, '$3')" && ok=$((ok + 1))
  done
  echo "$ok"
}
t="$(now)"
acked_before="$(insert_rows 1 "$BEFORE" before)"
t_before="$(ms "$t")"
log "acknowledged $acked_before rows in $t_before ms, now freezing replication"

# A session held open through the front, to see that the switch drops it.
work="$(mktemp -d)"; mkfifo "$work/in"
psql "$FRONT" -X -A -t -q <"$work/in" >"$work/out" 2>&1 &
held_pid=$!
exec 7>"$work/in"
echo "select 'held-session-open';" >&7
for _ in $(seq 1 50); do [ -s "$work/out" ] && break; sleep 0.1; done
held_first="$(head -1 "$work/out")"

freeze_json="$("$PGFO" freeze-replication)"
log "freeze: $freeze_json"
acked_after="$(insert_rows $((BEFORE + 1)) $((BEFORE + AFTER)) after)"
primary_count="$(psql_front -c "select count(*) from proof")"
log "acknowledged $acked_after more rows after the freeze; primary has $primary_count rows"

t_fail="$(now)"
"$PGFO" kill-primary
front_while_down="$(psql_front -c 'select 1' 2>&1 | head -1 || true)"
promote_json="$("$PGFO" promote)"
t_failover="$(ms "$t_fail")"
log "promote: $promote_json"

# The held session was dropped by the switch (or by the primary's death).
echo "select 'held-session-still-works';" >&7 2>/dev/null || true
exec 7>&-
wait "$held_pid" && held_rc=0 || held_rc=$?
held_after="psql exit $held_rc: $(tail -n +2 "$work/out" | head -1)"
rm -rf "$work"

read -r n_before n_after role <<<"$(psql_front -F ' ' -c "select count(*) filter (where phase='before'), count(*) filter (where phase='after'), case when pg_is_in_recovery() then 'standby' else 'primary' end from proof")"
t_total="$(ms "$t_all")"
ok=true
[ "$n_before" = "$acked_before" ] && [ "$n_after" = 0 ] && [ "$role" = primary ] && [ "$acked_after" = "$AFTER" ] || ok=false
printf '{"ok":%s,"acked_before_freeze":%s,"acked_after_freeze":%s,"primary_rows_before_kill":%s,"front_rows_before":%s,"front_rows_after":%s,"front_role":"%s","front_while_primary_dead":"%s","held_session":"%s -> %s","ensure_ms":%s,"insert_before_ms":%s,"kill_to_front_on_promoted_ms":%s,"total_ms":%s,"freeze":%s,"promote":%s}\n' \
  "$ok" "$acked_before" "$acked_after" "$primary_count" "$n_before" "$n_after" "$role" \
  "$(echo "$front_while_down" | tr -d '"\n' | cut -c1-120)" "$held_first" "$(echo "$held_after" | tr -d '"' | cut -c1-120)" \
  "$t_ensure" "$t_before" "$t_failover" "$t_total" "$freeze_json" "$promote_json"
[ "$ok" = true ] || { log "FAIL"; exit 1; }
log "OK: $n_before rows committed before the freeze survived, the $acked_after acknowledged after it are gone"
