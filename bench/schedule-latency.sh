#!/usr/bin/env bash
# Schedule slot -> task created latency: eavd (build/bin, 1 worker) on a
# throwaway durable cluster (bench/cluster.sh) fires an `@every 1s`
# schedule N times; prints p50, p99 and max of fired_at - slot from
# eav.schedule_fires.  fired_at is taken in the transaction that creates
# the task, right after it, just before the COMMIT.
#   bench/schedule-latency.sh [N]           (default 100 fires)
# shellcheck disable=SC2154 # $tmp and $dsn come from bench/cluster.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
n=${1:-100}
bin=$root/build/bin
. "$root/bench/cluster.sh"

printf '[database]\ndsn = %s\n[supervisor]\nworkers = 1\n' "$dsn" \
    >"$tmp/eav.conf"
"$bin/eavd" -f "$tmp/eav.conf" >"$tmp/eavd.log" 2>&1 &
eavd=$!
trap 'kill "$eavd" 2>/dev/null || true; wait "$eavd" || true; cleanup' EXIT
until "$PGBIN/psql" -X -qtA -c "SELECT count(*) FROM eav.processes
    WHERE kind = 'producer' AND state = 'up'" 2>/dev/null | grep -q 1; do
	kill -0 "$eavd" || { cat "$tmp/eavd.log" >&2; exit 1; }
	sleep 0.2
done
"$bin/eavctl" -d "$dsn" schedules add beat "@every 1s" default beat \
    '[{"tool": "noop"}]' >/dev/null
until [ "$("$PGBIN/psql" -X -qtA -c \
    "SELECT count(*) >= $n FROM eav.schedule_fires")" = t ]; do
	sleep 1
done
"$PGBIN/psql" -X -qtA -F ' ' -c "
    WITH l AS (SELECT extract(epoch FROM fired_at - slot) * 1000 AS ms
               FROM eav.schedule_fires ORDER BY slot LIMIT $n)
    SELECT 'schedule slot -> task created (ms): n', count(*),
           'p50', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           'p99', round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           'max', round(max(ms)::numeric, 1),
           'missed', (SELECT misses FROM eav.schedules)
    FROM l"
