#!/usr/bin/env bash
# Drains N no-op steps with W workers on a fresh database and prints
# "steps/s" (clock from eavd's start until the database shows all N
# succeeded, as the peers are timed).  For development; make bench runs
# the full comparison.
#   bench/drain.sh [N] [W]          (default 20000 4)
# BATCH sets the worker batch size (50); DRAIN_CONF is appended to the
# config file (e.g. DRAIN_CONF=$'[audit]\nseal_interval = 60s').
# DRAIN_HOOK is SQL run on the database before eavd starts (e.g. to reset
# pg_stat_statements).  Uses the private cluster of make run (started if
# needed).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-20000}
w=${2:-4}
unset EAV_DSN
"$root/scripts/cluster.sh" start >/dev/null
host="$root/var/run"
db=eavdrain
psql -X -q -h "$host" -U eav -d postgres -c "DROP DATABASE IF EXISTS $db" \
    -c "CREATE DATABASE $db" >/dev/null 2>&1
dsn="host=$host user=eav dbname=$db"
"$root/build/bin/eavctl" -d "$dsn" migrate >/dev/null
q() { psql -X -qtA -d "$dsn" -c "$1"; }
q "SELECT count(eav.enqueue('noop')) FROM generate_series(1, $n)" >/dev/null
q "VACUUM ANALYZE" >/dev/null
[ -z "${DRAIN_HOOK:-}" ] || q "$DRAIN_HOOK" >/dev/null
q "CHECKPOINT" >/dev/null
conf=$(mktemp /tmp/eavdrain.XXXXXX)
printf "[database]\ndsn = %s\n[supervisor]\nworkers = %s\n[worker]\nbatch_size = %s\nconcurrency = %s\n" "$dsn" "$w" "${BATCH:-50}" "${BATCH:-50}" >"$conf"
[ -z "${DRAIN_CONF:-}" ] || printf '%s\n' "$DRAIN_CONF" >>"$conf"
t0=$(date +%s.%N)
"$root/build/bin/eavd" -f "$conf" 2>"$conf.log" &
eavd=$!
trap 'kill $eavd 2>/dev/null; wait $eavd 2>/dev/null; rm -f "$conf" "$conf.log"' EXIT
until [ "$(q "SELECT count(*) FROM eav.tasks WHERE state = 'succeeded'")" -ge "$n" ]; do
	sleep 0.02
done
t1=$(date +%s.%N)
echo "$n $t0 $t1" | awk '{ printf "%d steps, %d workers: %.0f steps/s\n", $1, '"$w"', $1 / ($3 - $2) }'
