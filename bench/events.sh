#!/usr/bin/env bash
# Events -> tasks per second through normalize, dedupe and route: the SQL
# the producer runs (eav.inbox_ingest, batches of 100, one durable COMMIT
# each) on a throwaway durable cluster (bench/cluster.sh).  Each round
# puts N events in the inbox: 80% of a typed event that a rule routes to
# a one-step task, 10% duplicates of those (deduped) and 10% that break
# the type's schema (rejected); prints each round's events/s and the
# median.
#   bench/events.sh [N] [rounds]            (default 5000 3)
# shellcheck disable=SC2154 # $tmp and $dsn come from bench/cluster.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
n=${1:-5000}
rounds=${2:-3}
. "$root/bench/cluster.sh"
"$root/build/bin/eavctl" -d "$dsn" migrate >/dev/null
psql=("$PGBIN/psql" -X -qtA -v ON_ERROR_STOP=1)
"${psql[@]}" <<'SQL' >/dev/null
SELECT eav.event_type_set('order.created', '{"type": "object",
    "required": ["id", "amount"], "properties": {
    "id": {"type": "string", "maxLength": 32},
    "amount": {"type": "number", "minimum": 0},
    "tier": {"type": "string", "enum": ["gold", "basic"]}}}');
SELECT eav.rule_add('orders', 'order.created', NULL,
    '[{"field": "$.amount", "op": "gte", "value": 0}]',
    '{"kind": "order", "steps": [{"tool": "noop",
      "input": {"order": "$.id"}}]}', 100, 0, 1000000);
CREATE PROCEDURE public.drain() LANGUAGE plpgsql AS $$
DECLARE
    k integer;
BEGIN
    LOOP
        SELECT count(*) INTO k FROM eav.inbox_ingest(100, 'bench', false);
        COMMIT;
        EXIT WHEN k = 0;
    END LOOP;
END $$;
SQL
rates=()
for r in $(seq "$rounds"); do
	"${psql[@]}" -v n="$n" -v r="$r" <<'SQL' >/dev/null
INSERT INTO eav.inbox (source, event_key, type, body)
SELECT 'shop', :'r' || '-' || CASE WHEN i % 10 = 0 THEN i - 1 ELSE i END,
       'order.created',
       CASE WHEN i % 10 = 5 THEN '{"id": 5}'
            ELSE format('{"id": "o%s", "amount": %s, "tier": "gold"}', i, i)
       END
FROM generate_series(1, :n) i;
SQL
	"${psql[@]}" -c "VACUUM ANALYZE eav.inbox" >/dev/null
	t0=$(date +%s.%N)
	"${psql[@]}" -c "CALL public.drain()" >/dev/null
	t1=$(date +%s.%N)
	rate=$(echo "$n $t0 $t1" | awk '{ printf "%.0f", $1 / ($3 - $2) }')
	echo "round $r: $n events in $(echo "$t0 $t1" | awk '{ printf "%.2f", $2 - $1 }') s: $rate events/s"
	rates+=("$rate")
done
"${psql[@]}" -c "SELECT state, count(*) FROM eav.inbox GROUP BY 1 ORDER BY 1" |
    sed 's/^/inbox: /'
printf '%s\n' "${rates[@]}" | sort -n | awk '{ a[NR] = $1 } END {
    printf "median of %d rounds: %d events/s\n", NR, a[int((NR + 1) / 2)] }'
