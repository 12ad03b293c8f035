#!/usr/bin/env bash
# Compare a peer's target table with the expected final state written by
# bench/produce-orders.sh (last event per key):  bench/peer-verify.sh DB_URL TABLE EXPECTED_CSV
# Prints {"rows":..,"expected":..,"missing":..,"extra_or_different":..} and fails on any difference.
set -euo pipefail
DB_URL="${1:?usage: $0 DB_URL TABLE EXPECTED_CSV}"; TABLE="${2:?TABLE}"; CSV="${3:?EXPECTED_CSV}"
psql "$DB_URL" -XqAt -v ON_ERROR_STOP=1 <<SQL | tail -1 | tee /dev/stderr | grep -Eq '"ok" *: *true'
create temp table expected (order_id text primary key, customer text, amount numeric(12,2),
  currency text, status text, version bigint, ts timestamptz);
\copy expected from '$CSV' with (format csv)
select json_build_object(
  'rows', (select count(*) from $TABLE),
  'expected', (select count(*) from expected),
  'missing', (select count(*) from (select * from expected except select order_id, customer, amount, currency, status, version, ts from $TABLE) m),
  'extra_or_different', (select count(*) from (select order_id, customer, amount, currency, status, version, ts from $TABLE except select * from expected) x),
  'ok', (select count(*) from $TABLE) = (select count(*) from expected)
        and not exists (select * from expected except select order_id, customer, amount, currency, status, version, ts from $TABLE)
        and not exists (select order_id, customer, amount, currency, status, version, ts from $TABLE except select * from expected));
SQL
