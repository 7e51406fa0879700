#!/usr/bin/env bash
# What the SQL of the hot path costs after each migration: backend time
# per step of enqueue (eav.enqueue_many, batches of 50), claim and
# complete (batches of 50, as bench/sqlcost.sh), on databases migrated up
# to given points, in interleaved rounds; prints each round and each
# point's median with its throughput ratio to the first point.  A point
# is a migration number (every migration up to it) and may leave some
# out: "21-14" is up to 0021 without 0014.  Commits are asynchronous, so
# what is compared is CPU, not fsync.  Needs the cluster of
# scripts/cluster.sh.
#   bench/migration-cost.sh ROUNDS POINT...    e.g. 3 8 13 21 21-14
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:?rounds}
shift
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS POINT..." >&2; exit 2; }
psql=(env PGOPTIONS=--client-min-messages=warning psql -X -q -v ON_ERROR_STOP=1 -h "$root/var/run" -U eav)

dbname() { echo "mcost_${1//-/_no}"; }

make_db() {
	local db upto skip f n
	db=$(dbname "$1")
	upto=${1%%-*}
	skip=" $(echo "${1#"$upto"}" | tr '-' ' ') "
	"${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db" \
	    -c "CREATE DATABASE $db"
	"${psql[@]}" -d "$db" -c "CREATE SCHEMA eav; CREATE TABLE
	    eav.schema_migrations (version integer PRIMARY KEY, name text NOT
	    NULL, applied_at timestamptz NOT NULL DEFAULT now())"
	for f in "$root"/sql/[0-9][0-9][0-9][0-9]_*.sql; do
		n=$((10#$(basename "$f" | cut -c1-4)))
		[ "$n" -le "$upto" ] || continue
		case "$skip" in *" $n "*) continue ;; esac
		"${psql[@]}" -d "$db" -1 -f "$f" >/dev/null
	done
}

# One round on database $1: "enqueue claim complete" in us per step.
round() {
	"${psql[@]}" -d "$(dbname "$1")" -f - 2>&1 <<'SQL' | sed -n 's/.*COST //p'
SET synchronous_commit = off;
CREATE PROCEDURE pg_temp.cost(n int) LANGUAGE plpgsql AS $$
DECLARE
    inc bigint;
    b jsonb;
    t0 timestamptz;
    te interval := '0';
    tc interval := '0';
    tk interval := '0';
BEGIN
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        PERFORM count(*) FROM eav.enqueue_many('noop', (SELECT jsonb_agg(
            jsonb_build_object('order', 'A-' || j, 'amount', j))
            FROM generate_series(1, 50) j));
        COMMIT;
        te := te + (clock_timestamp() - t0);
    END LOOP;
    inc := eav.node_start('cost', 'h', 1, 'x');
    COMMIT;
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        SELECT jsonb_agg(jsonb_build_object('id', step_id, 'epoch', claim_epoch,
            'outcome', 'succeeded', 'result', '{"ok": true}'::jsonb))
        INTO b FROM eav.claim('cost', inc, 1, 50);
        COMMIT;
        tc := tc + (clock_timestamp() - t0);
        t0 := clock_timestamp();
        PERFORM count(*) FROM eav.complete_batch('w', b);
        COMMIT;
        tk := tk + (clock_timestamp() - t0);
    END LOOP;
    RAISE WARNING 'COST % % %',
        round(extract(epoch FROM te) * 1e6 / (n * 50), 1),
        round(extract(epoch FROM tc) * 1e6 / (n * 50), 1),
        round(extract(epoch FROM tk) * 1e6 / (n * 50), 1);
END $$;
CALL pg_temp.cost(200);
SQL
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { print a[int((NR + 1) / 2)] }'; }

for p in "$@"; do make_db "$p"; done
declare -A sums
for i in $(seq "$rounds"); do
	for p in "$@"; do
		r=$(round "$p")
		echo "round $i point $p: enqueue claim complete (us/step): $r"
		sums[$p]="${sums[$p]:-} $(echo "$r" | awk '{ print $1 + $2 + $3 }')"
	done
done
first=
for p in "$@"; do
	# shellcheck disable=SC2086
	m=$(median ${sums[$p]})
	[ -n "$first" ] || first=$m
	echo "point $p: median $m us/step, throughput ratio to point $1:" \
	    "$(awk -v a="$first" -v b="$m" 'BEGIN { printf "%.3f", a / b }')"
done
