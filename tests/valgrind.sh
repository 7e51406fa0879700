#!/bin/sh
# `make valgrind`: the whole process tree under memcheck on a private
# cluster: eavd with 2 workers and the producer's demo load, one worker
# killed with SIGKILL mid-run, then a graceful SIGTERM.  Fails on any
# memcheck error or definitely-lost block in any eav process.
#   tests/valgrind.sh [build-dir]        (default: build)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/${1:-build}
. "$root/scripts/lib.sh"

tmp=$(mktemp -d /tmp/eavvg.XXXXXX)
chmod 755 "$tmp"
pg_own "$tmp"
cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 ||
	    true
	rm -rf "$tmp"
}
trap cleanup EXIT

as_pg mkdir "$tmp/pg"
pg_init "$tmp/pg" "$tmp" <<CONF
fsync = off
CONF
as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w -t 60 start >/dev/null
"$PGBIN/createdb" -h "$tmp" -U eav eav
dsn="host=$tmp user=eav dbname=eav"
cat >"$tmp/eav.conf" <<CONF
[database]
dsn = $dsn
[supervisor]
workers = 2
startup_timeout = 60s
shutdown_grace = 30s
[producer]
demo = on
demo_rate = 50
CONF

psql() { "$PGBIN/psql" -X -qtA -d "$dsn" -c "$1" 2>/dev/null; }
unset EAV_DSN EAV_INJECT NOTIFY_SOCKET
valgrind --quiet --trace-children=yes --leak-check=full \
    --errors-for-leak-kinds=definite --error-exitcode=99 \
    --log-file="$tmp/vg.%p.log" "$build/bin/eavd" -f "$tmp/eav.conf" \
    2>"$tmp/eavd.log" &
eavd=$!

# Poll with a deadline until work flows: 200 steps succeeded.
wait_for() {
	n=0
	until [ "$(psql "$1")" = t ]; do
		n=$((n + 1))
		if [ "$n" -gt 600 ]; then
			echo "valgrind: timed out waiting for: $1" >&2
			tail -20 "$tmp/eavd.log" >&2
			exit 1
		fi
		sleep 0.1
	done
}
wait_for "select count(*) >= 200 from eav.steps where state = 'succeeded'"
victim=$(psql "select pid from eav.proj_processes where kind = 'worker' and state = 'up' limit 1")
kill -9 "$victim"
wait_for "select count(*) = 3 from eav.proj_processes where state = 'up' and pid <> $victim"
wait_for "select count(*) >= 400 from eav.steps where state = 'succeeded'"
kill -TERM "$eavd"
status=0
wait "$eavd" || status=$?

errors=$(grep -l -E 'ERROR SUMMARY: [1-9]|definitely lost: [1-9]|Invalid (read|write)|uninitialised' \
    "$tmp"/vg.*.log 2>/dev/null || true)
logs=$(find "$tmp" -name "vg.*.log" | wc -l)
if [ "$status" != 0 ] || [ -n "$errors" ]; then
	echo "valgrind: eavd exit status $status" >&2
	for f in $errors; do cat "$f" >&2; done
	tail -20 "$tmp/eavd.log" >&2
	exit 1
fi
echo "valgrind: $logs process logs, no errors, nothing definitely lost" \
    "(eavd exit $status; worker $victim killed and replaced)"
