-- 0027_trace_lock_order: one lock order for the per-trace locks of a
-- completion batch.
--
-- eav.task_spawn (0016) takes the advisory lock of the parent's trace
-- while the steps trigger creates a succeeded step's children, so one
-- batch whose steps spawn in traces X and Y takes X then Y, in the order
-- of its steps.  Two workers completing steps of the same two traces in
-- opposite orders could deadlock (40P01: one batch rolled back and
-- completed again, but a wasted round trip and a scary log line).  The
-- worker's cycle now takes every trace lock its batch may need first,
-- sorted by lock key; task_spawn then finds them held (advisory locks are
-- re-entrant) and no two batches can wait on each other for them.  Only
-- succeeded completions whose result asks for children ("enqueue") need
-- them, so the common batch takes none.

CREATE FUNCTION eav.trace_locks_take(p_batch jsonb)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    k bigint;
    v_n integer := 0;
BEGIN
    FOR k IN
        SELECT DISTINCT hashtextextended('trace:' || s.trace_id, 0)
        FROM jsonb_array_elements(p_batch) AS a(x)
        JOIN eav.steps s ON s.id = (x->>'id')::bigint
        WHERE x->>'outcome' = 'succeeded'
          AND jsonb_typeof(x->'result'->'enqueue') = 'array'
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(k);
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.trace_locks_take(jsonb) IS 'Takes, in key order, the trace locks (as eav.task_spawn takes them) of every step of a completion batch that succeeded asking for children; returns how many. Called first by eav.complete_and_claim, so batches never wait on each other''s trace locks in opposite orders.';

CREATE OR REPLACE FUNCTION eav.complete_and_claim(p_actor text, p_batch jsonb,
    p_node text, p_incarnation bigint, p_pid integer, p_limit integer,
    p_queues text[] DEFAULT NULL)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer, status text,
    kind text, config text, gate text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF jsonb_typeof(p_batch) = 'array' AND jsonb_array_length(p_batch) > 0 THEN
        PERFORM eav.trace_locks_take(p_batch);
    END IF;
    RETURN QUERY
    SELECT c.step_id, NULL::bigint, NULL::bigint, NULL::integer, NULL::text,
           NULL::text, NULL::text, NULL::text, NULL::uuid, NULL::integer,
           c.status, NULL::text, NULL::text, NULL::text
    FROM eav.complete_batch(p_actor, p_batch) c
    WHERE c.status IN ('fenced', 'already_applied');
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT c.step_id, c.task_id, c.claim_epoch, c.attempt, c.tool,
               c.builtin, c.input, c.idempotency_key, c.trace_id,
               c.timeout_ms, 'claimed'::text, c.kind, c.config, c.gate
        FROM eav.claim(p_node, p_incarnation, p_pid, p_limit, p_queues) c;
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.complete_and_claim(text, jsonb, text, bigint, integer, integer, text[]) IS 'A worker''s cycle in one transaction: takes the trace locks its batch needs in key order (eav.trace_locks_take), completes the batch (eav.complete_batch; rows with status fenced or already_applied report completions that did not apply) and, if p_limit > 0, claims up to p_limit steps (rows with status claimed, with the tool''s kind, config and the step''s gate).';
