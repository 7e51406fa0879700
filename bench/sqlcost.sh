#!/usr/bin/env bash
# Backend cost of the hot path, one session, no workers: claim 50 then
# complete them, 200 times, each in its own transaction.  Prints the time
# per step of each.  For development (a stable figure to compare SQL
# changes with); make bench measures the real thing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/bench/drain.sh" 100 1 >/dev/null
psql -X -q -h "$root/var/run" -U eav -d eavdrain -f - <<'SQL'
SELECT count(eav.enqueue('noop')) FROM generate_series(1, 10000);
VACUUM ANALYZE;
CREATE PROCEDURE pg_temp.cost(n int) LANGUAGE plpgsql AS $$
DECLARE
    inc bigint;
    b jsonb;
    t0 timestamptz;
    tc interval := '0';
    tk interval := '0';
BEGIN
    inc := eav.node_start('sqlcost', 'h', 1, 'x');
    COMMIT;
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        SELECT jsonb_agg(jsonb_build_object('id', step_id, 'epoch', claim_epoch,
            'outcome', 'succeeded', 'result', '{}'::jsonb))
        INTO b FROM eav.claim('sqlcost', inc, 1, 50);
        COMMIT;
        tc := tc + (clock_timestamp() - t0);
        t0 := clock_timestamp();
        PERFORM count(*) FROM eav.complete_batch('w', b);
        COMMIT;
        tk := tk + (clock_timestamp() - t0);
    END LOOP;
    RAISE NOTICE 'per step: claim % us, complete % us',
        round(extract(epoch FROM tc) * 1e6 / (n * 50), 1),
        round(extract(epoch FROM tk) * 1e6 / (n * 50), 1);
END $$;
CALL pg_temp.cost(200);
SQL
