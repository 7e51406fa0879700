#!/usr/bin/env bash
# Audit insert cost with the hash chain vs without (issue 7): on one
# throwaway cluster, database "plain" has migrations 0001-0009 only (no
# chain) and "chain" has every migration with eavd sealing; pgbench
# writes audit rows through eav.audit() in transactions of 10 from C
# clients for SECS seconds, alternating plain and chain ROUNDS times.
# synchronous_commit is off so that commits do not hide the CPU cost.
# Prints rows/s per round, the median ratio, and the sealing delay.
#
#   bench/auditcost.sh [clients] [secs] [rounds]      (default 4 15 3)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
clients=${1:-4} secs=${2:-15} rounds=${3:-3}
tmp=$(mktemp -d /tmp/eavaudit.XXXXXX)
chmod 755 "$tmp"
pg_own "$tmp"
eavd_pid=
cleanup() {
	[ -n "$eavd_pid" ] && kill "$eavd_pid" 2>/dev/null && wait "$eavd_pid"
	as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 ||
	    true
	rm -rf "$tmp"
}
trap cleanup EXIT
as_pg mkdir "$tmp/pg"
pg_init "$tmp/pg" "$tmp" <<CONF
max_connections = 50
shared_buffers = 256MB
synchronous_commit = off
CONF
as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w start >/dev/null
export PGHOST=$tmp PGUSER=eav
"$PGBIN/createdb" plain
"$PGBIN/createdb" chain
# What migrate.c creates before the first migration.
psql -X -q -d plain -c "CREATE SCHEMA eav; CREATE TABLE eav.schema_migrations
    (version integer PRIMARY KEY, name text NOT NULL,
     applied_at timestamptz NOT NULL DEFAULT now())"
for f in "$root"/sql/000[1-9]_*.sql; do
	psql -X -q -v ON_ERROR_STOP=1 -d plain -f "$f" >/dev/null
done
"$root/build/bin/eavctl" -d "host=$tmp user=eav dbname=chain" migrate \
    >/dev/null
printf '[database]\ndsn = host=%s user=eav dbname=chain\n[supervisor]\n%s\n' \
    "$tmp" "workers = 1" >"$tmp/eavd.conf"
"$root/build/bin/eavd" -f "$tmp/eavd.conf" >"$tmp/eavd.log" 2>&1 &
eavd_pid=$!
cat >"$tmp/w.sql" <<'SQL'
SELECT eav.audit('bench.row', 'success', 'worker-n1/1/4242',
    '8d3c0f54-5b2e-4a43-9a3b-1b8e0f5d2a11', g, g * 128 + 1,
    jsonb_build_object('epoch', 1, 'attempt', 1, 'idempotency_key',
                       'eav-' || g || '-1'))
FROM generate_series(1, 10) g;
SQL

# Rows per second of one pgbench run against database $1.
rate() {
	pgbench -n -M prepared -c "$clients" -j "$clients" -T "$secs" \
	    -f "$tmp/w.sql" "$1" | awk '/^tps/ { printf "%d\n", $3 * 10 }'
}

plain_r=() chain_r=()
for r in $(seq "$rounds"); do
	p=$(rate plain)
	c=$(rate chain)
	plain_r+=("$p") chain_r+=("$c")
	echo "round $r: plain $p rows/s, chain $c rows/s"
done
med() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 }
    END { print a[int((NR + 1) / 2)] }'; }
mp=$(med "${plain_r[@]}") mc=$(med "${chain_r[@]}")
echo "median: plain $mp rows/s, chain $mc rows/s, ratio" \
    "$(awk -v a="$mc" -v b="$mp" 'BEGIN { printf "%.2f", a / b }')"
# Everything written must get sealed; then the delay of each row.
until [ "$(psql -X -At -d chain -c \
    'SELECT unsealed FROM eav.audit_head()')" = 0 ]; do
	kill -0 "$eavd_pid"
	psql -X -q -d chain -c 'SELECT pg_sleep(0.2)' >/dev/null
done
psql -X -At -d chain -c "SELECT format('sealing delay: p50 %s ms, p99 %s ms, '
    || 'max %s ms over %s rows', round(percentile_cont(0.5) WITHIN GROUP
    (ORDER BY d)), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)),
    round(max(d)), count(*)) FROM (SELECT extract(epoch FROM c.sealed_at -
    e.at) * 1000 AS d FROM eav.audit_chain c JOIN eav.audit_events e
    USING (id)) x"
"$root/build/bin/eavctl" -d "host=$tmp user=eav dbname=chain" audit verify
