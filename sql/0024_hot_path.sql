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

-- eav.audit_seal, same chain, less work per row and per round:
--   * the head (seq, id, hash of the last link) is kept in
--     eav.audit_seal_state, written in the same transaction as the links
--     and checked against the chain by primary key each round.
--     It was read with ORDER BY seq DESC LIMIT 1, which the planner ran as
--     a scan of the whole chain while the table's statistics still said
--     it was small (38 scans of 38,000 rows each in one bench drain):
--     every round cost as much as the chain was long;
--   * the digests and ids come in two arrays from one set-based query,
--     the loop only links (one sha256 and one array store a row, where it
--     was a cursor fetch and four array stores), and the rows are
--     inserted from the arrays with prev_hash as the previous row's hash.
ALTER TABLE eav.audit_seal_state
    ADD COLUMN head_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN head_id bigint NOT NULL DEFAULT 0,
    ADD COLUMN head_hash bytea NOT NULL DEFAULT
        '\x0000000000000000000000000000000000000000000000000000000000000000';
COMMENT ON COLUMN eav.audit_seal_state.head_seq IS 'seq of the chain''s last link (0: none yet); written by eav.audit_seal with the links.';
COMMENT ON COLUMN eav.audit_seal_state.head_id IS 'Event id of the chain''s last link (0: none yet).';
COMMENT ON COLUMN eav.audit_seal_state.head_hash IS 'hash of the chain''s last link (32 zero bytes: none yet), the prev_hash of the next.';
UPDATE eav.audit_seal_state s SET head_seq = c.seq, head_id = c.id, head_hash = c.hash
FROM (SELECT seq, id, hash FROM eav.audit_chain ORDER BY seq DESC LIMIT 1) c;

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
    SELECT s.head_seq, s.head_id, s.head_hash INTO STRICT v_seq, v_id, v_prev
    FROM eav.audit_seal_state s;
    -- Two primary-key probes show the chain still ends there.  It does
    -- not only if someone changed it behind the sealer (verify reports
    -- that); the sealer then goes on from the chain's real head, as it
    -- always did.
    IF NOT ((v_seq = 0 OR EXISTS (SELECT 1 FROM eav.audit_chain c
                                  WHERE c.seq = v_seq AND c.id = v_id
                                    AND c.hash = v_prev))
            AND NOT EXISTS (SELECT 1 FROM eav.audit_chain c
                            WHERE c.seq = v_seq + 1)) THEN
        SELECT c.seq, c.id, c.hash INTO v_seq, v_id, v_prev
        FROM eav.audit_chain c ORDER BY c.seq DESC LIMIT 1;
        IF NOT FOUND THEN
            v_seq := 0;
            v_id := 0;
            v_prev := '\x0000000000000000000000000000000000000000000000000000000000000000';
        END IF;
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
    UPDATE eav.audit_seal_state
    SET head_seq = v_seq + v_n, head_id = v_ids[v_n], head_hash = v_prev;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.audit_seal(integer) IS 'Seals up to p_limit committed audit events, in id order, below the horizon under which no event can still commit; returns how many (0 also when another sealer holds the lock). Called by eavd every audit.seal_interval, again at once after a full batch. Needs READ COMMITTED.';

-- A running step always has its worker's pid (only eav.claim makes a step
-- running, and it sets owner_pid), now said where the planner and a
-- reader can see it.  The sweep below names owner_pid IS NOT NULL so
-- that it reads steps_running_idx: without it, the planner could not
-- prove the index's predicate and eavd's sweep read every step, every
-- sweep_interval (a parallel scan of the table with a million pending
-- steps: the 1M-backlog throughput of make bench paid for it).
ALTER TABLE eav.steps ADD CONSTRAINT steps_running_has_pid
    CHECK (state <> 'running' OR owner_pid IS NOT NULL);

CREATE OR REPLACE FUNCTION eav.reconcile_sweep(p_node text, p_incarnation bigint,
    p_live_pids integer[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := format('supervisor:%s/%s', p_node, p_incarnation);
    v_n integer := 0;
    r record;
    v_old bigint[];
BEGIN
    -- Orphans: steps of this incarnation whose pid is not a live child,
    -- and any step of this node left by an older incarnation (a claim that
    -- committed after that incarnation was reconciled).
    IF NOT EXISTS (SELECT 1 FROM eav.steps s
                   WHERE s.state = 'running' AND s.owner_pid IS NOT NULL
                     AND s.owner_node = p_node
                     AND (s.owner_incarnation <> p_incarnation
                          OR s.owner_pid <> ALL (coalesce(p_live_pids, '{}')))) THEN
        RETURN 0;
    END IF;
    SELECT array_agg(DISTINCT owner_incarnation) INTO v_old FROM eav.steps
    WHERE state = 'running' AND owner_pid IS NOT NULL AND owner_node = p_node
      AND owner_incarnation <> p_incarnation;
    PERFORM eav.terminate_sessions(ARRAY[p_incarnation], p_live_pids);
    IF v_old IS NOT NULL THEN
        PERFORM eav.terminate_sessions(v_old, NULL);
    END IF;
    FOR r IN
        SELECT s.id, s.claim_epoch FROM eav.steps s
        WHERE s.state = 'running' AND s.owner_pid IS NOT NULL
          AND s.owner_node = p_node
          AND (s.owner_incarnation <> p_incarnation
               OR s.owner_pid <> ALL (coalesce(p_live_pids, '{}')))
        ORDER BY s.id
    LOOP
        IF eav.reconcile_step(r.id, r.claim_epoch, 'sweep', v_actor) <> 'skipped' THEN
            v_n := v_n + 1;
        END IF;
    END LOOP;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.reconcile_sweep(text, bigint, integer[]) IS 'Back-stop run by eavd every sweep_interval: reconciles running steps of this node owned by an older incarnation, or by a pid of this incarnation that is not among its live children.';
