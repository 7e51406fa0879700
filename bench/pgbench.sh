#!/usr/bin/env bash
# The "physical limit" of a SKIP LOCKED queue on this cluster, with
# pgbench: each pgbench transaction claims one pending job and marks it
# done, as (a) two commits (claim, then done) or (b) one.  pgbench's tps
# is jobs/s.  One run per client count; table refilled before each.
#   bench/pgbench.sh MODE CLIENTS DURATION_S ROWS    (MODE: two-commit|one-commit)
# Uses PGHOST/PGPORT/PGUSER/PGDATABASE.  Prints a RESULT {json} line.
set -euo pipefail

mode=$1 c=$2 duration=$3 rows=$4
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
tmp=$(mktemp -d /tmp/eavpgbench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT


"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 <<SQL >/dev/null
DROP TABLE IF EXISTS bench_jobs;
CREATE TABLE bench_jobs (id bigserial PRIMARY KEY, state text NOT NULL,
    payload jsonb, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON bench_jobs (id) WHERE state = 'pending';
INSERT INTO bench_jobs (state, payload)
    SELECT 'pending', jsonb_build_object('i', g) FROM generate_series(1, $rows) g;
VACUUM ANALYZE bench_jobs;
CHECKPOINT;
SQL

claim="UPDATE bench_jobs SET state = 'running' WHERE id = (SELECT id FROM bench_jobs
    WHERE state = 'pending' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id \\gset"
done_sql="UPDATE bench_jobs SET state = 'done' WHERE id = :id;"
if [ "$mode" = one-commit ]; then
	printf 'BEGIN;\n%s\n%s\nEND;\n' "$claim" "$done_sql" >"$tmp/script.sql"
else
	printf '%s\n%s\n' "$claim" "$done_sql" >"$tmp/script.sql"
fi
tps=$("$PGBIN/pgbench" -n -M prepared -j 2 -c "$c" -T "$duration" \
    -f "$tmp/script.sql" 2>/dev/null |
    awk '/without initial connection time/ { print int($3) }')
echo "RESULT {\"lib\": \"pgbench\", \"test\": \"throughput\", \"mode\": \"$mode\", \"concurrency\": $c, \"process_jobs_per_s\": ${tps:-0}}"
