#!/bin/sh
# The chaos soak (make soak-ci, make soak).  For each seed: a throwaway
# PostgreSQL cluster with durable settings (fsync, synchronous_commit and
# full_page_writes on) in a temporary directory, migrated by eavctl, then
# build/bin/eavsoak, which runs eavd, the client, the nemeses and the
# checker and writes var/soak/<profile>-<seed>/ (summary.txt ends with
# "N passed, N failed").  The cluster, eavd and the directory go on exit.
#   tests/chaos/soak.sh ci|long [SEED|all]
# Without a seed, one of three fixed seeds is picked from the commit hash,
# so successive commits cycle through them; `all` runs the three.
# SOAK_TASKS=n SOAK_SECS=s SOAK_BASE_SECS=s shrink a profile (development).
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/scripts/lib.sh"
profile=${1:-}
case "$profile" in
ci|long) ;;
*) echo "usage: tests/chaos/soak.sh ci|long [seed|all]" >&2; exit 2 ;;
esac
seeds="1 2 3"
commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo 0000000)
short=$(echo "$commit" | cut -c1-12)
case "${2:-}" in
"")
	n=$((0x$(echo "$commit" | cut -c1-7)))
	list=$(echo "$seeds" | cut -d' ' -f$((n % 3 + 1)))
	;;
all) list=$seeds ;;
*[!0-9]*) echo "soak: seed must be a number or all" >&2; exit 2 ;;
*) list=$2 ;;
esac

tmp=
dir=
cleanup() {
	if [ -n "$tmp" ] && [ -s "$dir/eavd.pid" ]; then
		# Only our eavd: the pid file may name a pid reused since.
		pid=$(cat "$dir/eavd.pid")
		if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = eavd ] &&
		    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$dir/eav.conf"
		then
			kill -9 "$pid" 2>/dev/null || true
		fi
	fi
	if [ -n "$tmp" ]; then
		as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -m immediate stop \
		    >/dev/null 2>&1 || true
		rm -rf "$tmp"
	fi
	tmp=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs one seed; returns eavsoak's status.
run_seed() {
	seed=$1
	dir=$root/var/soak/$profile-$seed
	rm -rf "$dir"
	mkdir -p "$dir"
	tmp=$(mktemp -d /tmp/eavsoak.XXXXXX)
	chmod 755 "$tmp"
	# A copy of the binaries: a build in the tree during the run must
	# not swap the programs under test (or their SQL) half-way.
	mkdir "$tmp/bin"
	for b in eavd eav-worker eav-producer eavctl eavsoak; do
		cp "$root/build/bin/$b" "$tmp/bin/$b"
	done
	pg_own "$tmp"
	as_pg mkdir "$tmp/pg"
	pg_init "$tmp/pg" "$tmp" <<-CONF
	max_connections = 100
	shared_buffers = 128MB
	fsync = on
	synchronous_commit = on
	full_page_writes = on
	CONF
	as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w -t 60 start \
	    >/dev/null
	"$PGBIN/createdb" -h "$tmp" -U eav eav
	dsn="host=$tmp user=eav dbname=eav"
	"$tmp/bin/eavctl" -d "$dsn" migrate >/dev/null
	u=
	[ "$(id -u)" = 0 ] && u=-u
	echo "soak: profile $profile, seed $seed, commit $short; writing $dir"
	rc=0
	# shellcheck disable=SC2086
	SOAK_COMMIT=$short "$tmp/bin/eavsoak" run -p "$profile" \
	    -s "$seed" -o "$dir" -d "$dsn" -D "$tmp/pg" -L "$tmp/pg.log" \
	    -B "$tmp/bin" $u || rc=$?
	cp "$tmp/pg.log" "$dir/postgresql.log" 2>/dev/null || true
	cleanup
	if [ -s "$dir/summary.txt" ]; then
		cat "$dir/summary.txt"
	else
		echo "soak: seed $seed: no summary (eavsoak exited $rc)"
		rc=1
	fi
	return "$rc"
}

start=$(date +%s)
status=0
for s in $list; do
	run_seed "$s" || status=1
done
echo "soak: $profile, seeds $list: $([ "$status" = 0 ] && echo passed ||
    echo FAILED) in $(( $(date +%s) - start )) s"
exit "$status"
