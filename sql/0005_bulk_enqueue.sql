-- 0005_bulk_enqueue: many one-step tasks in one set-based statement, the
-- way graphile-worker's add_jobs and pg-boss's insert take a batch.

INSERT INTO eav.settings VALUES
    ('max_enqueue_batch', 10000, 'Most tasks one eav.enqueue_many call creates.');

CREATE FUNCTION eav.enqueue_many(p_tool text, p_inputs jsonb,
    p_queue text DEFAULT 'default', p_kind text DEFAULT NULL,
    p_max_attempts integer DEFAULT NULL, p_actor text DEFAULT NULL,
    p_run_at timestamptz DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_kind text := coalesce(p_kind, p_tool);
    v_run_at timestamptz := coalesce(p_run_at, now());
    v_q eav.queues;
    v_n integer;
    v_bad bigint;
    v_cap bigint := eav.setting('max_input_bytes');
BEGIN
    SELECT * INTO v_q FROM eav.queues WHERE name = p_queue;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown queue "%"', p_queue
            USING ERRCODE = '22023', HINT = 'See table eav.queues.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM eav.tools WHERE name = p_tool) THEN
        RAISE EXCEPTION 'unknown tool "%"', p_tool
            USING ERRCODE = '22023', HINT = 'See table eav.tools.';
    END IF;
    IF length(v_kind) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'kind must be 1 to 128 characters' USING ERRCODE = '22023';
    END IF;
    IF p_max_attempts IS NOT NULL AND p_max_attempts NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'max_attempts must be between 1 and 1000, not %', p_max_attempts
            USING ERRCODE = '22023';
    END IF;
    IF NOT isfinite(v_run_at) THEN
        RAISE EXCEPTION 'run_at must be a finite time' USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(p_inputs) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'inputs must be a JSON array of input objects'
            USING ERRCODE = '22023';
    END IF;
    v_n := jsonb_array_length(p_inputs);
    IF v_n > eav.setting('max_enqueue_batch') THEN
        RAISE EXCEPTION 'one call enqueues at most % tasks, not %',
            eav.setting('max_enqueue_batch'), v_n USING ERRCODE = '54000';
    END IF;
    -- One pass over the inputs finds the first bad one, so the error
    -- names it and nothing is stored.
    SELECT n INTO v_bad FROM jsonb_array_elements(p_inputs) WITH ORDINALITY AS a(e, n)
    WHERE jsonb_typeof(e) <> 'object' ORDER BY n LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'input %: must be a JSON object', v_bad USING ERRCODE = '22023';
    END IF;
    SELECT n INTO v_bad FROM jsonb_array_elements(p_inputs) WITH ORDINALITY AS a(e, n)
    WHERE octet_length(e::text) > v_cap ORDER BY n LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'input %: more than the limit of % bytes', v_bad, v_cap
            USING ERRCODE = '54000';
    END IF;

    -- Ids drawn first, so each task's step and audit row find it without
    -- relying on the order RETURNING happens to produce.
    RETURN QUERY
    WITH i AS (
        SELECT nextval(pg_get_serial_sequence('eav.tasks', 'id')) AS id, e,
               gen_random_uuid() AS trace
        FROM jsonb_array_elements(p_inputs) WITH ORDINALITY AS a(e, n)
        ORDER BY n
    ), t AS (
        INSERT INTO eav.tasks (id, queue, kind, trace_id, step_count, created_by)
        OVERRIDING SYSTEM VALUE
        SELECT i.id, p_queue, v_kind, i.trace, 1, v_actor FROM i
        RETURNING id
    ), s AS (
        INSERT INTO eav.steps (id, task_id, ordinal, queue, trace_id, tool, input,
                               idempotency_key, state, max_attempts, run_at)
        SELECT eav.step_id(i.id, 1), i.id, 1, p_queue, i.trace, p_tool, i.e,
               format('eav:%s:1', i.id), 'pending',
               coalesce(p_max_attempts, v_q.default_max_attempts), v_run_at
        FROM i
    ), a AS (
        INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, payload)
        SELECT 'task.enqueued', 'success', v_actor, i.trace, i.id,
               jsonb_build_object('queue', p_queue, 'kind', v_kind, 'steps', 1,
                                  'tools', jsonb_build_array(p_tool), 'batch', v_n)
        FROM i
    )
    SELECT t.id FROM t ORDER BY t.id;
    IF v_n > 0 AND v_run_at <= now() THEN
        PERFORM pg_notify('eav_steps', '');
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.enqueue_many(text, jsonb, text, text, integer, text, timestamptz) IS 'Creates one one-step task per element of p_inputs (a JSON array of input objects) in one statement, each audited task.enqueued; returns the task ids in input order. All or nothing: a bad input is named by its position and nothing is stored.';
