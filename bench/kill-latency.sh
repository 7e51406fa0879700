#!/usr/bin/env bash
# Time from `kill -9` of a worker running a step to the committed
# `tool_call.unknown` audit row of that step, over N kills.
#   bench/kill-latency.sh [N]             (default 50)
# Uses EAV_DSN, or the private cluster of `make run` (started if needed).
# The kill time is taken (CLOCK_REALTIME) just before kill(1); the audit
# row's `at` is clock_timestamp() inside the reconciling transaction, so
# the figure includes reaping, ending the dead session and the UPDATE,
# and slightly overstates (the date(1) fork) rather than understates.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-50}
if [ -z "${EAV_DSN:-}" ]; then
	"$root/scripts/cluster.sh" start >/dev/null
	EAV_DSN=$("$root/scripts/cluster.sh" dsn)
fi
export EAV_DSN
tmp=$(mktemp -d /tmp/eavkill.XXXXXX)
trap 'kill "$eavd" 2>/dev/null; wait "$eavd" 2>/dev/null; rm -rf "$tmp"' EXIT

cat >"$tmp/eav.conf" <<CONF
[database]
dsn = $EAV_DSN
[supervisor]
workers = 4
restart_backoff_min = 10ms
restart_backoff_max = 100ms
restart_intensity = 0
CONF
"$root/build/bin/eavd" -f "$tmp/eav.conf" 2>"$tmp/eavd.log" &
eavd=$!

q() { psql -X -qtA -v ON_ERROR_STOP=1 -d "$EAV_DSN" -c "$1"; }
poll() {	# poll a query until it returns a value, 10 s deadline
	local v
	for _ in $(seq 1 2000); do
		v=$(q "$1" 2>/dev/null || true)
		[ -n "$v" ] && { echo "$v"; return 0; }
		sleep 0.005
	done
	echo "timed out: $1" >&2
	return 1
}
poll "select 1 from eav.proj_processes where kind = 'worker' and state = 'up' group by 1 having count(*) = 4" >/dev/null

for _ in $(seq 1 "$n"); do
	tid=$(q "select eav.enqueue('sleep', '{\"ms\": 600000}', p_max_attempts => 1000)")
	sid=$(q "select id from eav.steps where task_id = $tid")
	pid=$(poll "select owner_pid from eav.steps where id = $sid and state = 'running'")
	t0=$(date +%s.%N)
	kill -9 "$pid"
	at=$(poll "select extract(epoch from at) from eav.audit_events where step_id = $sid and type = 'tool_call.unknown'")
	echo "$at $t0" | awk '{ printf "%.3f\n", ($1 - $2) * 1000 }'
	q "select eav.task_cancel($tid, 'bench')" >/dev/null
done >"$tmp/ms"

sort -n "$tmp/ms" | awk '{ a[NR] = $1 }
END {
	printf "kill -9 -> tool_call.unknown committed, %d kills: ", NR
	printf "min %.1f ms, p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n",
	    a[1], a[int(NR * 0.5 + 0.5)], a[int(NR * 0.9 + 0.5)],
	    a[int(NR * 0.99 + 0.5)], a[NR]
}'
