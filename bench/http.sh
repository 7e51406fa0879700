#!/usr/bin/env bash
# make bench-http: HTTP tool calls per second against the local test
# server (tests/far/httpd, plain http on 127.0.0.1) with 4 workers at
# their default concurrency, the median of 3 runs, each on a fresh
# schema of one throwaway durable cluster (bench/cluster.sh).  Prints the
# runs and appends the figure, with the date, commit and machine, to
# bench/RESULTS.md.  make bench measures the same in each of its rounds.
#   bench/http.sh [N] [RUNS]          (default 5000 calls, 3 runs)
# shellcheck disable=SC2154 # $tmp and $dsn come from bench/cluster.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
n=${1:-5000}
runs=${2:-3}
bin=$root/build/bin
. "$root/bench/cluster.sh"

rates=()
for _ in $(seq 1 "$runs"); do
	line=$("$bin/eavbench" http -d "$dsn" -n "$n" -c 4 2>"$tmp/eavbench.err") ||
	    { cat "$tmp/eavbench.err" >&2; exit 1; }
	echo "$line"
	rates+=("$(echo "$line" | sed 's/^RESULT //' | jq -r '.calls_per_s')")
done
median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '
	{ v[NR] = $1 }
	END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
each=$(printf '%s, ' "${rates[@]}")
echo "http: $median calls/s (median of $runs: ${each%, })"

# The machine is shared: its load when the runs ended goes with the figure.
load=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git -C "$root" rev-parse --short HEAD)
[ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ] &&
    commit="$commit+dirty"
{
	echo
	echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit: HTTP tool calls"
	echo
	echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); $("$PGBIN/psql" -X -qtA -c 'SELECT version()' | cut -d' ' -f1-2); load average $load"
	echo "Command: \`make bench-http\` (bench/http.sh $n $runs)."
	echo
	echo "| figure | eav |"
	echo "|---|---|"
	echo "| HTTP tool calls/s against the local test server (tests/far/httpd), 4 workers, $n calls; median of $runs (each) | **$median** (${each%, }) |"
} >>"$root/bench/RESULTS.md"
