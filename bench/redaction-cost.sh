#!/usr/bin/env bash
# What redaction costs on the hot path: backend time per step of claim
# and complete (batches of 50, as bench/sqlcost.sh) and of enqueue, on a
# database migrated with every migration (redaction on) and on one
# without sql/0014_redaction.sql (off), in interleaved rounds; prints
# each round and the median ratio.  Commits are asynchronous, so what
# is compared is CPU, not fsync.  Needs the cluster of
# scripts/cluster.sh.
#   bench/redaction-cost.sh [rounds]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$root/var/run" -U eav)

make_db() {
	"${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS $1" \
	    -c "CREATE DATABASE $1"
	"${psql[@]}" -d "$1" -c "CREATE SCHEMA eav; CREATE TABLE
	    eav.schema_migrations (version integer PRIMARY KEY, name text NOT
	    NULL, applied_at timestamptz NOT NULL DEFAULT now())"
	for f in "$root"/sql/[0-9][0-9][0-9][0-9]_*.sql; do
		if [ "$1" = redact_off ] && [[ $f == */0014_redaction.sql ]]
		then
			continue
		fi
		"${psql[@]}" -d "$1" -1 -f "$f" >/dev/null
	done
}

# One round on database $1: "enqueue claim complete" in us per step.
round() {
	"${psql[@]}" -d "$1" -f - 2>&1 <<'SQL' | sed -n 's/.*COST //p'
SET synchronous_commit = off;
CREATE PROCEDURE pg_temp.cost(n int) LANGUAGE plpgsql AS $$
DECLARE
    inc bigint;
    b jsonb;
    t0 timestamptz;
    te interval;
    tc interval := '0';
    tk interval := '0';
BEGIN
    te := '0';
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
    RAISE NOTICE 'COST % % %',
        round(extract(epoch FROM te) * 1e6 / (n * 50), 1),
        round(extract(epoch FROM tc) * 1e6 / (n * 50), 1),
        round(extract(epoch FROM tk) * 1e6 / (n * 50), 1);
END $$;
CALL pg_temp.cost(200);
SQL
}

make_db redact_on
make_db redact_off
on=()
off=()
for i in $(seq "$rounds"); do
	for db in redact_off redact_on; do
		r=$(round "$db")
		echo "round $i $db: enqueue claim complete (us/step): $r"
		t=$(echo "$r" | awk '{ print $1 + $2 + $3 }')
		if [ "$db" = redact_on ]; then on+=("$t"); else off+=("$t"); fi
	done
done
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { print a[int((NR + 1) / 2)] }'; }
mon=$(median "${on[@]}")
moff=$(median "${off[@]}")
echo "median us/step: off $moff, on $mon;" \
    "throughput ratio on/off $(awk -v a="$moff" -v b="$mon" \
    'BEGIN { printf "%.3f", a / b }')"
