#!/bin/sh
# The private PostgreSQL cluster of `make run`, under ./var:
#   scripts/cluster.sh start|stop|status|dsn
# Data in ./var/pg, socket in ./var/run, no TCP port.  As root the server
# runs as 'postgres'; if that user cannot enter ./var (say, the checkout is
# in a private home or temp directory), data and socket live in
# /var/tmp/eav-<hash> and ./var/pg and ./var/run point there.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
var=$root/var

base() {
	if [ -L "$var/pg" ]; then
		dirname "$(readlink "$var/pg")"
	elif pg_can_reach "$var"; then
		echo "$var"
	else
		echo "/var/tmp/eav-$(echo "$root" | md5sum | cut -c1-12)"
	fi
}

dsn() {
	echo "host=$var/run port=5432 dbname=eav user=eav"
}

start() {
	mkdir -p "$var"
	b=$(base)
	if [ "$b" != "$var" ]; then
		mkdir -p "$b/pg" "$b/run"
		chmod 711 "$b"
		pg_own "$b/pg" "$b/run"
		[ -L "$var/pg" ] || ln -sfn "$b/pg" "$var/pg"
		[ -L "$var/run" ] || ln -sfn "$b/run" "$var/run"
		echo "cluster: postgres cannot enter $var; data is in $b"
	else
		mkdir -p "$var/pg" "$var/run"
		pg_own "$var/pg" "$var/run"
	fi
	sock="$b/run"
	if [ "${#sock}" -gt 90 ]; then
		echo "cluster: socket path $sock is too long for a Unix socket" >&2
		exit 1
	fi
	if [ ! -s "$b/pg/PG_VERSION" ]; then
		echo "cluster: creating a PostgreSQL cluster in $b/pg"
		pg_init "$b/pg" "$sock" <<-CONF
		max_connections = 100
		shared_buffers = 128MB
		fsync = on
		synchronous_commit = on
		CONF
	fi
	if ! as_pg "$PGBIN/pg_ctl" -D "$b/pg" status >/dev/null 2>&1; then
		as_pg "$PGBIN/pg_ctl" -D "$b/pg" -l "$b/pg/server.log" -w \
		    -t 60 start >/dev/null
	fi
	if ! "$PGBIN/psql" -h "$sock" -U eav -d postgres -tAc \
	    "select 1 from pg_database where datname = 'eav'" | grep -q 1; then
		"$PGBIN/createdb" -h "$sock" -U eav eav
	fi
}

stop() {
	b=$(base)
	if [ -s "$b/pg/PG_VERSION" ] &&
	    as_pg "$PGBIN/pg_ctl" -D "$b/pg" status >/dev/null 2>&1; then
		as_pg "$PGBIN/pg_ctl" -D "$b/pg" -m fast -w stop >/dev/null
		echo "cluster: stopped"
	else
		echo "cluster: not running"
	fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) as_pg "$PGBIN/pg_ctl" -D "$(base)/pg" status ;;
dsn) dsn ;;
*) echo "usage: scripts/cluster.sh start|stop|status|dsn" >&2; exit 2 ;;
esac
