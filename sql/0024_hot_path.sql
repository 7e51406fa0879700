-- 0024_hot_path: the cost of the claim/complete path, measured
-- (bench/migration-cost.sh, track_functions = all) and cut.
--
-- eav.key_is_derived was called, not inlined: "'eav:' || bigint" is
-- anytextcat, which is STABLE (a type's output function might be), so
-- the planner may not inline it into an IMMUTABLE function's callers.
-- It ran five times a step (the steps trigger's WHEN, three times in
-- the claim), as a SQL function call each time.  With explicit text
-- casts the body is immutable and the planner inlines it.
CREATE OR REPLACE FUNCTION eav.key_is_derived(p_key text, p_step_id bigint)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_key = 'eav:' || (p_step_id / 128)::text || ':'
                          || (p_step_id % 128)::text;
$$;

-- eav.audit_seal, same chain, a third less work per row: the digests
-- and ids come in two arrays from one set-based query, the loop only
-- links (one sha256 and one array store a row, where it was a cursor
-- fetch and four array stores), and the rows are inserted from the
-- arrays with prev_hash as the previous row's hash.
CREATE OR REPLACE FUNCTION eav.audit_seal(p_limit integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_safe bigint;
    v_seq bigint;
    v_id bigint;
    v_prev bytea;
    v_first bytea;
    v_ids bigint[];
    v_digests bytea[];
    v_hashes bytea[];
    v_n integer;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000000 THEN
        RAISE EXCEPTION 'p_limit must be 1 to 1000000' USING ERRCODE = '22023';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'eav.audit_seal needs READ COMMITTED'
            USING ERRCODE = '25000',
                  HINT = 'Each statement must see what committed before it.';
    END IF;
    -- One sealer at a time over every eavd: the others skip this round.
    IF NOT pg_try_advisory_xact_lock(7007, 12) THEN
        RETURN 0;
    END IF;
    v_safe := eav.audit_seal_horizon();
    SELECT c.seq, c.id, c.hash INTO v_seq, v_id, v_prev
    FROM eav.audit_chain c ORDER BY c.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        v_seq := 0;
        v_id := 0;
        v_prev := '\x0000000000000000000000000000000000000000000000000000000000000000';
    END IF;
    SELECT array_agg(x.id ORDER BY x.id), array_agg(x.d ORDER BY x.id)
    INTO v_ids, v_digests
    FROM (SELECT e.id, sha256(convert_to(eav.audit_canonical(e), 'UTF8')) AS d
          FROM eav.audit_events e
          WHERE e.id > v_id AND e.id <= v_safe
          ORDER BY e.id LIMIT p_limit) x;
    v_n := coalesce(cardinality(v_ids), 0);
    IF v_n = 0 THEN
        RETURN 0;
    END IF;
    v_first := v_prev;
    FOR i IN 1..v_n LOOP
        v_prev := eav.audit_link(v_prev, v_seq + i, v_digests[i]);
        v_hashes[i] := v_prev;
    END LOOP;
    PERFORM set_config('eav.sealing', 'on', true);
    INSERT INTO eav.audit_chain (seq, id, prev_hash, hash)
    SELECT v_seq + u.o, u.id, coalesce(lag(u.h) OVER (ORDER BY u.o), v_first),
           u.h
    FROM unnest(v_ids, v_hashes) WITH ORDINALITY AS u(id, h, o);
    PERFORM set_config('eav.sealing', 'off', true);
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.audit_seal(integer) IS 'Seals up to p_limit committed audit events, in id order, below the horizon under which no event can still commit; returns how many (0 also when another sealer holds the lock). Called by eavd every audit.seal_interval, again at once after a full batch. Needs READ COMMITTED.';
