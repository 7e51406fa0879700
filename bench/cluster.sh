# shellcheck shell=bash
# Sourced by bench/run.sh and bench/http.sh, after scripts/lib.sh: a
# throwaway PostgreSQL cluster with durable settings (fsync,
# synchronous_commit and full_page_writes on, and checked), removed on
# exit.  Leaves $tmp (its directory), $dsn (database bench) and the PG*
# variables psql and pgbench read.
tmp=$(mktemp -d /tmp/eavbench.XXXXXX)
chmod 755 "$tmp"
pg_own "$tmp"
as_pg mkdir "$tmp/pg" "$tmp/sock"
export EAVBENCH_PGDATA=$tmp/pg EAVBENCH_SOCKDIR=$tmp/sock EAVBENCH_PORT=55433
export PGHOST=$tmp/sock PGPORT=55433 PGUSER=postgres PGDATABASE=bench
cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 ||
	    true
	rm -rf "$tmp"
}
trap cleanup EXIT
as_pg "$PGBIN/initdb" -D "$tmp/pg" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 >"$tmp/initdb.log" 2>&1
cat <<CONF | as_pg tee -a "$tmp/pg/postgresql.conf" >/dev/null
listen_addresses = ''
unix_socket_directories = '$tmp/sock'
port = 55433
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
wal_level = replica
max_wal_size = 4GB
checkpoint_timeout = 15min
effective_cache_size = 4GB
work_mem = 8MB
maintenance_work_mem = 256MB
autovacuum = on
CONF
as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w -t 60 start >/dev/null
"$PGBIN/createdb" bench
for s in fsync synchronous_commit full_page_writes; do
	v=$("$PGBIN/psql" -X -qtA -c "SHOW $s")
	[ "$v" = on ] || { echo "bench: $s is $v, not on" >&2; exit 1; }
done
# shellcheck disable=SC2034 # for the script that sources this
dsn="host=$tmp/sock port=55433 user=postgres dbname=bench"
