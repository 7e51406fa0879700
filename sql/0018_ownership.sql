-- 0018_ownership: resource keys and their owners.  Two services mutating
-- one record is how automation corrupts it, so a step may name the
-- resource it mutates ("resource": "customer:42" in its spec), and:
--
-- 1. Authority.  eav.resource_owners says which queue may mutate a key:
--    a pattern ending in ':' is a prefix ("customer:" owns customer:42),
--    any other pattern is one exact key; the longest matching pattern
--    wins, so "customer:vip:" can belong to another queue than
--    "customer:".  The queue is the owner because it is eav's service
--    boundary: a queue's steps come from one producer and run on the
--    workers that serve it.  A key no pattern matches has no owner and
--    any queue may use it (still one running step at a time).
--
--    Checked at the claim, not at enqueue: owners change (set and
--    cleared while steps wait), the claim is the last moment before the
--    mutation can begin, and a refusal must leave its audit row and its
--    alarm, which a raised error at enqueue would roll back.  A step on
--    the wrong queue is claimed with the gate "conflict": the worker does
--    not call the tool and sends the outcome back, and
--    eav.step_authority_conflict fails the step (audited
--    authority.conflict, alarm authority_conflict about the resource).
--    No retry: routing does not fix itself.
--
-- 2. One running step per resource key, enforced by the database: the
--    claim skips a pending step whose key has a running step, and the
--    unique partial index steps_resource_running_idx makes a second one
--    impossible whatever a caller does.  The claim must never trip that
--    index (a unique violation would fail a worker's whole batch), and
--    its one statement cannot see what claims committed after its
--    snapshot.  So the claim's filter calls eav.resource_take: it takes
--    a transaction advisory lock on the key (try: a claim never waits)
--    and only then looks for a running step, in a query of its own,
--    which in a VOLATILE function gets a snapshot taken after the lock.
--    Every step that becomes running does so in a claim that holds its
--    key's lock until it commits, and a lock is released only once that
--    commit is visible; so a claim that gets the lock sees every earlier
--    claim of the key, and one that does not skips the step.  Two steps
--    of one key in the same batch: the lock is re-entrant, so the batch
--    keeps the first (in claim order) and leaves the other pending.
--
-- The hot path does not pay: steps without a resource have NULL in
-- resource_key, no index entry (both new indexes are partial), one
-- "IS NULL" test in the claim's filter, and a claim reads the owners
-- only when a claimed step has a key and some owner is registered.
--
-- Keys: 1 to 200 bytes, a namespace of [a-z0-9_.-], a colon, then
-- printable ASCII without spaces (^[a-z0-9_.-]+:[!-~]+$).  Printable
-- ASCII keeps keys unambiguous in logs, alarms and eavctl's table, and
-- 200 bytes is room for a namespace and a UUID or two.  Over the limit:
-- 54000; any other malformation: 22023.  Nothing is stored either way.

CREATE FUNCTION eav.resource_key_check(p_key text, p_what text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION '% must not be empty', p_what USING ERRCODE = '22023';
    END IF;
    IF octet_length(p_key) > 200 THEN
        RAISE EXCEPTION '% is % bytes, more than the limit of 200 bytes',
            p_what, octet_length(p_key) USING ERRCODE = '54000';
    END IF;
    IF p_key !~ '^[a-z0-9_.-]+:[!-~]+$' THEN
        RAISE EXCEPTION '% "%" is not a resource key', p_what, p_key
            USING ERRCODE = '22023',
                  HINT = 'A resource key is namespace:id: a namespace of a-z, 0-9, _ . -, a colon, then printable ASCII without spaces, e.g. customer:42.';
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.resource_key_check(text, text) IS 'Refuses a resource key that is empty or malformed (22023) or over 200 bytes (54000); p_what names it in the message.';

ALTER TABLE eav.steps ADD COLUMN resource_key text
    CONSTRAINT steps_resource_key_check CHECK (resource_key IS NULL
        OR octet_length(resource_key) <= 200
           AND resource_key ~ '^[a-z0-9_.-]+:[!-~]+$');
COMMENT ON COLUMN eav.steps.resource_key IS 'Resource the step mutates (namespace:id, e.g. customer:42), or NULL. At most one step per key is running; a key owned by another queue than the step''s is refused at the claim (eav.resource_owners).';

-- The backstop and the claim's lookup of "is a step of this key running".
CREATE UNIQUE INDEX steps_resource_running_idx ON eav.steps (resource_key)
    WHERE state = 'running' AND resource_key IS NOT NULL;

CREATE TABLE eav.resource_owners (
    pattern  text PRIMARY KEY
             CHECK (octet_length(pattern) <= 200
                    AND pattern ~ '^[a-z0-9_.-]+:[!-~]*$'),
    queue    text NOT NULL REFERENCES eav.queues (name),
    reason   text NOT NULL,
    set_by   text NOT NULL,
    set_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE eav.resource_owners IS 'Which queue may mutate a resource: a step whose resource_key matches a pattern here and whose queue is not its owner is refused at the claim (authority.conflict). Changed only by eav.resource_owner_set / eav.resource_owner_clear.';
COMMENT ON COLUMN eav.resource_owners.pattern IS 'A prefix ending in '':'' (customer: owns customer:42) or one exact key; the longest matching pattern decides.';
COMMENT ON COLUMN eav.resource_owners.queue IS 'The owner: the queue whose steps may mutate matching resources.';
COMMENT ON COLUMN eav.resource_owners.reason IS 'Why this owner (required).';
COMMENT ON COLUMN eav.resource_owners.set_by IS 'Actor of the last change.';
COMMENT ON COLUMN eav.resource_owners.set_at IS 'When it last changed.';

-- Owners are few (a namespace or a special key each), so this reads
-- them all rather than probing an index once per prefix of the key.
CREATE FUNCTION eav.resource_owner_match(p_key text)
RETURNS eav.resource_owners
LANGUAGE sql STABLE AS $$
    SELECT * FROM eav.resource_owners o
    WHERE o.pattern = p_key
       OR right(o.pattern, 1) = ':' AND starts_with(p_key, o.pattern)
    ORDER BY length(o.pattern) DESC
    LIMIT 1
$$;
COMMENT ON FUNCTION eav.resource_owner_match(text) IS 'The owner row of a resource key: the longest pattern that is the key or a prefix of it ending in '':''; NULL if none.';

CREATE FUNCTION eav.resource_owner_reason(p_reason text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_reason IS NULL OR btrim(p_reason) = '' THEN
        RAISE EXCEPTION 'a change of resource owner needs a reason'
            USING ERRCODE = '22023';
    END IF;
    IF length(p_reason) > 1000 THEN
        RAISE EXCEPTION 'reason is % characters, more than 1000',
            length(p_reason) USING ERRCODE = '54000';
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.resource_owner_reason(text) IS 'Refuses a missing or blank reason (22023) or one over 1000 characters (54000).';

CREATE FUNCTION eav.resource_owner_set(p_pattern text, p_queue text,
    p_reason text, p_actor text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_prev text;
BEGIN
    PERFORM eav.resource_owner_reason(p_reason);
    -- A key, or a bare namespace ("customer:"), which is no key.
    IF p_pattern IS NULL OR p_pattern !~ '^[a-z0-9_.-]+:$'
       OR octet_length(p_pattern) > 200 THEN
        PERFORM eav.resource_key_check(p_pattern, 'owner pattern');
    END IF;
    IF p_queue IS NULL OR NOT EXISTS (SELECT 1 FROM eav.queues WHERE name = p_queue) THEN
        RAISE EXCEPTION 'unknown queue "%"', coalesce(p_queue, 'null')
            USING ERRCODE = '22023', HINT = 'See table eav.queues.';
    END IF;
    SELECT queue INTO v_prev FROM eav.resource_owners WHERE pattern = p_pattern
    FOR UPDATE;
    INSERT INTO eav.resource_owners (pattern, queue, reason, set_by)
    VALUES (p_pattern, p_queue, p_reason, v_actor)
    ON CONFLICT (pattern) DO UPDATE
        SET queue = EXCLUDED.queue, reason = EXCLUDED.reason,
            set_by = EXCLUDED.set_by, set_at = now();
    PERFORM eav.audit('resource_owner.set', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('pattern', p_pattern, 'queue', p_queue,
                           'previous_queue', v_prev, 'reason', p_reason));
    RETURN CASE WHEN v_prev IS NULL THEN 'created' ELSE 'updated' END;
END;
$$;
COMMENT ON FUNCTION eav.resource_owner_set(text, text, text, text) IS 'Makes a queue the owner of a resource pattern (prefix ending in '':'' or an exact key); a reason is required. Audited resource_owner.set. Returns created or updated.';

CREATE FUNCTION eav.resource_owner_clear(p_pattern text, p_reason text,
    p_actor text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_queue text;
BEGIN
    PERFORM eav.resource_owner_reason(p_reason);
    DELETE FROM eav.resource_owners WHERE pattern = p_pattern
    RETURNING queue INTO v_queue;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'resource pattern "%" has no owner', coalesce(p_pattern, 'null')
            USING ERRCODE = 'EA003', HINT = 'See table eav.resource_owners.';
    END IF;
    PERFORM eav.audit('resource_owner.cleared', 'success', v_actor, NULL, NULL,
        NULL, jsonb_build_object('pattern', p_pattern, 'queue', v_queue,
                                 'reason', p_reason));
    RETURN v_queue;
END;
$$;
COMMENT ON FUNCTION eav.resource_owner_clear(text, text, text) IS 'Removes the owner of a resource pattern (reason required; EA003 if it has none). Audited resource_owner.cleared. Returns the queue that owned it.';

-- Claim side ---------------------------------------------------------------

CREATE FUNCTION eav.resource_lock_id(p_key text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended('eav.resource:' || p_key, 0)
$$;
COMMENT ON FUNCTION eav.resource_lock_id(text) IS 'Advisory lock key of a resource key (a hash: a collision only makes a claim skip a step until the next one).';

-- VOLATILE and plpgsql on purpose: the lookup must run in a query of its
-- own, with a snapshot taken after the lock (see the top of this file);
-- an SQL function could be inlined into the claim and use its snapshot.
CREATE FUNCTION eav.resource_take(p_key text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(eav.resource_lock_id(p_key)) THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM eav.steps
    WHERE resource_key = p_key AND state = 'running';
    RETURN NOT FOUND;
END;
$$;
COMMENT ON FUNCTION eav.resource_take(text) IS 'For the claim: true if this transaction may make a step of the resource key running: it holds the key''s advisory lock (until it ends) and no step of the key is running as of a snapshot taken after the lock.';

-- The step's resource is owned by another queue: refused, no call made.
-- If the owners changed since the claim and the step's queue is now
-- allowed, it goes back to pending unspent instead.
CREATE FUNCTION eav.step_authority_conflict(p_actor text, p_step_id bigint,
    p_epoch bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s eav.steps;
    o eav.resource_owners;
    v_error text;
BEGIN
    SELECT * INTO s FROM eav.steps
    WHERE id = p_step_id AND claim_epoch = p_epoch AND state = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN eav.complete_missed(p_actor, p_step_id, p_epoch);
    END IF;
    o := eav.resource_owner_match(s.resource_key);
    IF o.queue IS NULL OR o.queue = s.queue THEN
        RETURN eav.step_defer(p_actor, s.id, p_epoch, 0, false,
            'not called: the resource''s owner changed before the refusal');
    END IF;
    v_error := format('authority conflict: resource %s belongs to queue %s (pattern %s), not to queue %s; refused before any call',
                      s.resource_key, o.queue, o.pattern, s.queue);
    PERFORM eav.audit('authority.conflict', 'refused', p_actor, s.trace_id,
        s.task_id, s.id, jsonb_build_object('epoch', p_epoch,
            'resource', s.resource_key, 'queue', s.queue,
            'owner', o.queue, 'pattern', o.pattern, 'tool', s.tool));
    PERFORM eav.alarm_raise('authority_conflict', 'warning',
        'resource:' || s.resource_key, v_error,
        jsonb_build_object('step_id', s.id, 'task_id', s.task_id,
            'queue', s.queue, 'owner', o.queue, 'pattern', o.pattern), p_actor);
    RETURN (SELECT c.status FROM eav.complete(p_actor, ARRAY[s.id], ARRAY[p_epoch],
        ARRAY['failed'], ARRAY[NULL::jsonb], ARRAY[v_error]) c);
END;
$$;
COMMENT ON FUNCTION eav.step_authority_conflict(text, bigint, bigint) IS 'Fails a running step whose resource key is owned by another queue than the step''s: audited authority.conflict, alarm authority_conflict (subject resource:<key>), no call made. If the owner changed since the claim so that the step is allowed, defers it instead (eav.step_defer).';

-- Enqueue ------------------------------------------------------------------

-- As in 0002, with "resource" (eav.resource_key_check) in the
-- normalized step.
CREATE OR REPLACE FUNCTION eav.step_spec_check(p_step jsonb, p_n integer, p_default_max integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_field text;
    v_max integer;
    v_cap bigint := eav.setting('max_input_bytes');
    v_size bigint;
    v_key text;
    v_num numeric;
BEGIN
    IF jsonb_typeof(p_step) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'step %: must be a JSON object', p_n USING ERRCODE = '22023';
    END IF;
    SELECT k INTO v_field FROM jsonb_object_keys(p_step) AS k
    WHERE k NOT IN ('tool', 'input', 'idempotency_key', 'max_attempts',
                    'resource')
    ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'step %: unknown field "%"', p_n, v_field
            USING ERRCODE = '22023',
                  HINT = 'Known fields: tool, input, idempotency_key, max_attempts, resource.';
    END IF;
    IF jsonb_typeof(p_step->'tool') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'step %: "tool" must be a string', p_n USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM eav.tools WHERE name = p_step->>'tool') THEN
        RAISE EXCEPTION 'step %: unknown tool "%"', p_n, p_step->>'tool'
            USING ERRCODE = '22023', HINT = 'See table eav.tools.';
    END IF;
    IF p_step ? 'input' AND jsonb_typeof(p_step->'input') <> 'object' THEN
        RAISE EXCEPTION 'step %: "input" must be a JSON object', p_n
            USING ERRCODE = '22023';
    END IF;
    v_size := octet_length(coalesce(p_step->'input', '{}')::text);
    IF v_size > v_cap THEN
        RAISE EXCEPTION 'step %: input is % bytes, more than the limit of % bytes',
            p_n, v_size, v_cap USING ERRCODE = '54000';
    END IF;
    v_max := p_default_max;
    IF p_step ? 'max_attempts' THEN
        IF jsonb_typeof(p_step->'max_attempts') <> 'number' THEN
            RAISE EXCEPTION 'step %: "max_attempts" must be an integer between 1 and 1000', p_n
                USING ERRCODE = '22023';
        END IF;
        v_num := (p_step->>'max_attempts')::numeric;
        IF v_num <> trunc(v_num) OR v_num < 1 OR v_num > 1000 THEN
            RAISE EXCEPTION 'step %: "max_attempts" must be an integer between 1 and 1000, not %',
                p_n, p_step->>'max_attempts' USING ERRCODE = '22023';
        END IF;
        v_max := v_num::integer;
    END IF;
    IF p_step ? 'idempotency_key' THEN
        IF jsonb_typeof(p_step->'idempotency_key') <> 'string' THEN
            RAISE EXCEPTION 'step %: "idempotency_key" must be a string', p_n
                USING ERRCODE = '22023';
        END IF;
        v_key := p_step->>'idempotency_key';
        IF octet_length(v_key) NOT BETWEEN 1 AND 255 THEN
            RAISE EXCEPTION 'step %: "idempotency_key" must be 1 to 255 bytes, not %',
                p_n, octet_length(v_key) USING ERRCODE = '22023';
        END IF;
    END IF;
    IF p_step ? 'resource' THEN
        IF jsonb_typeof(p_step->'resource') <> 'string' THEN
            RAISE EXCEPTION 'step %: "resource" must be a string', p_n
                USING ERRCODE = '22023';
        END IF;
        PERFORM eav.resource_key_check(p_step->>'resource',
            format('step %s: "resource"', p_n));
    END IF;
    RETURN jsonb_build_object('tool', p_step->'tool',
        'input', coalesce(p_step->'input', '{}'),
        'idempotency_key', v_key, 'max_attempts', v_max,
        'resource', p_step->>'resource');
END;
$$;
COMMENT ON FUNCTION eav.step_spec_check(jsonb, integer, integer) IS 'Validates one step object of an enqueue (fields, tool, input size, max_attempts, idempotency key, resource key) and returns it normalized.';

-- As in 0002, storing each step's resource key.
CREATE OR REPLACE FUNCTION eav.task_enqueue(p_queue text, p_kind text, p_steps jsonb,
    p_actor text DEFAULT NULL, p_trace_id uuid DEFAULT NULL,
    p_parent_task_id bigint DEFAULT NULL, p_run_at timestamptz DEFAULT NULL,
    p_event_id bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_q eav.queues;
    v_specs jsonb := '[]';
    v_n integer;
    v_task bigint;
    v_trace uuid := p_trace_id;
    v_depth integer := 0;
    v_run_at timestamptz := coalesce(p_run_at, now());
    v_parent eav.tasks;
BEGIN
    IF p_queue IS NULL THEN
        RAISE EXCEPTION 'queue must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_q FROM eav.queues WHERE name = p_queue;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown queue "%"', p_queue
            USING ERRCODE = '22023', HINT = 'See table eav.queues.';
    END IF;
    IF p_kind IS NULL OR length(p_kind) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'kind must be 1 to 128 characters' USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(p_steps) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'steps must be a JSON array of step objects'
            USING ERRCODE = '22023';
    END IF;
    v_n := jsonb_array_length(p_steps);
    IF v_n = 0 THEN
        RAISE EXCEPTION 'a task needs at least one step' USING ERRCODE = '22023';
    END IF;
    IF v_n > least(eav.setting('max_steps_per_task'), 127) THEN
        RAISE EXCEPTION 'a task has at most % steps, not %',
            least(eav.setting('max_steps_per_task'), 127), v_n USING ERRCODE = '54000';
    END IF;
    IF NOT isfinite(v_run_at) THEN
        RAISE EXCEPTION 'run_at must be a finite time' USING ERRCODE = '22023';
    END IF;
    IF p_parent_task_id IS NOT NULL THEN
        SELECT * INTO v_parent FROM eav.tasks WHERE id = p_parent_task_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'parent task % does not exist', p_parent_task_id
                USING ERRCODE = '22023';
        END IF;
        v_trace := coalesce(v_trace, v_parent.trace_id);
        v_depth := v_parent.depth + 1;
    END IF;
    v_trace := coalesce(v_trace, gen_random_uuid());

    SELECT jsonb_agg(eav.step_spec_check(e, n::integer, v_q.default_max_attempts) ORDER BY n)
    INTO v_specs
    FROM jsonb_array_elements(p_steps) WITH ORDINALITY AS a(e, n);

    INSERT INTO eav.tasks (queue, kind, trace_id, parent_task_id, depth,
                           step_count, event_id, created_by)
    VALUES (p_queue, p_kind, v_trace, p_parent_task_id, v_depth, v_n,
            p_event_id, v_actor)
    RETURNING id INTO v_task;

    INSERT INTO eav.steps (id, task_id, ordinal, queue, trace_id, tool, input,
                           idempotency_key, state, max_attempts, run_at,
                           resource_key)
    SELECT eav.step_id(v_task, n::integer), v_task, n, p_queue, v_trace,
           s->>'tool', s->'input',
           coalesce(s->>'idempotency_key', format('eav:%s:%s', v_task, n)),
           CASE WHEN n = 1 THEN 'pending' ELSE 'blocked' END,
           (s->>'max_attempts')::integer, v_run_at, s->>'resource'
    FROM jsonb_array_elements(v_specs) WITH ORDINALITY AS a(s, n);

    PERFORM eav.audit('task.enqueued', 'success', v_actor, v_trace, v_task, NULL,
        jsonb_build_object('queue', p_queue, 'kind', p_kind, 'steps', v_n,
                           'tools', (SELECT jsonb_agg(s->'tool') FROM jsonb_array_elements(v_specs) s),
                           'event_id', p_event_id, 'parent_task_id', p_parent_task_id));
    IF v_run_at <= now() THEN
        PERFORM pg_notify('eav_steps', '');
    END IF;
    RETURN v_task;
END;
$$;
COMMENT ON FUNCTION eav.task_enqueue(text, text, jsonb, text, uuid, bigint, timestamptz, bigint) IS 'Creates a task with its ordered steps (a JSON array of {"tool", "input", "idempotency_key", "max_attempts", "resource"}); step 1 is pending, the rest blocked. Audited task.enqueued. Returns the task id.';

-- Completion ---------------------------------------------------------------

-- As in 0009, with the outcome conflict.
CREATE OR REPLACE FUNCTION eav.complete_batch(p_actor text, p_batch jsonb)
RETURNS TABLE (step_id bigint, status text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
    v_epochs bigint[];
    v_outcomes text[];
    v_results jsonb[];
    v_errors text[];
    v_special boolean;
    v_rec boolean;
    v_tools boolean;
    e jsonb;
BEGIN
    SELECT coalesce(bool_or(x->>'outcome' NOT IN ('succeeded', 'failed', 'retry', 'release')), false),
           coalesce(bool_or(x ? 'rec'), false), coalesce(bool_or(x ? 'tool'), false)
    INTO v_special, v_rec, v_tools
    FROM jsonb_array_elements(p_batch) AS a(x);
    -- Outcomes other than plain completions: each its own guarded call.
    IF v_special THEN
        FOR e IN SELECT x FROM jsonb_array_elements(p_batch) AS a(x)
                 WHERE x->>'outcome' NOT IN ('succeeded', 'failed', 'retry', 'release')
        LOOP
            step_id := (e->>'id')::bigint;
            status := CASE e->>'outcome'
                WHEN 'unknown' THEN eav.complete_unknown(p_actor, step_id,
                    (e->>'epoch')::bigint, e->>'detected_by', e->>'error')
                WHEN 'deferred' THEN eav.step_defer(p_actor, step_id,
                    (e->>'epoch')::bigint, (e->>'retry_after_ms')::bigint,
                    coalesce((e->>'rate_limited')::boolean, false), e->>'error')
                WHEN 'replay' THEN eav.step_replay(p_actor, step_id, (e->>'epoch')::bigint)
                WHEN 'collision' THEN eav.step_collision(p_actor, step_id,
                    (e->>'epoch')::bigint)
                WHEN 'conflict' THEN eav.step_authority_conflict(p_actor,
                    step_id, (e->>'epoch')::bigint)
                END;
            IF status IS NULL THEN
                RAISE EXCEPTION 'unknown outcome "%" for step %', e->>'outcome', step_id
                    USING ERRCODE = '22023';
            END IF;
            RETURN NEXT;
        END LOOP;
    END IF;
    SELECT array_agg((e->>'id')::bigint ORDER BY n),
           array_agg((e->>'epoch')::bigint ORDER BY n),
           array_agg(e->>'outcome' ORDER BY n),
           array_agg(CASE WHEN jsonb_typeof(e->'result') <> 'null'
                          THEN e->'result' END ORDER BY n),
           array_agg(e->>'error' ORDER BY n)
    INTO v_ids, v_epochs, v_outcomes, v_results, v_errors
    FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS a(e, n)
    WHERE e->>'outcome' IN ('succeeded', 'failed', 'retry', 'release');
    IF v_ids IS NOT NULL THEN
        RETURN QUERY SELECT c.step_id, c.status FROM eav.complete(p_actor, v_ids,
            v_epochs, v_outcomes, v_results, v_errors) c;
    END IF;
    -- A client-given key's final outcome is kept, so a later step with
    -- the same key and input gets it without a call (eav.step_replay).
    IF v_rec THEN
        INSERT INTO eav.idempotency_outcomes (tool, idempotency_key, step_id,
            claim_epoch, outcome, result, error)
        SELECT s.tool, s.idempotency_key, s.id, s.claim_epoch, s.state, s.result, s.error
        FROM jsonb_array_elements(p_batch) AS a(x)
        JOIN eav.steps s ON s.id = (x->>'id')::bigint
        WHERE x ? 'rec' AND x->>'outcome' IN ('succeeded', 'failed')
          AND s.claim_epoch = (x->>'epoch')::bigint AND s.state = x->>'outcome'
        ON CONFLICT DO NOTHING;
    END IF;
    IF v_tools THEN
        PERFORM eav.tool_health_apply(p_actor, p_batch);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.complete_batch(text, jsonb) IS 'A worker''s completion batch: a JSON array of {"id", "epoch", "outcome", "result", "error"}. Outcomes succeeded, failed, retry, release go to eav.complete; unknown (with "detected_by") to eav.complete_unknown; deferred ("retry_after_ms", "rate_limited") to eav.step_defer; replay to eav.step_replay; collision to eav.step_collision; conflict to eav.step_authority_conflict. "rec": the step''s client-given key gets its final outcome recorded; "tool" and "tool_error": the call counts for the tool''s health (eav.tool_health_apply).';

-- Claim --------------------------------------------------------------------

-- As in 0015, with resource keys: one running step per key, and the
-- gate conflict for a key owned by another queue.
CREATE OR REPLACE FUNCTION eav.claim(p_node text, p_incarnation bigint, p_pid integer,
    p_limit integer, p_queues text[] DEFAULT NULL)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer,
    kind text, config text, gate text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_actor text := format('worker:%s/%s/%s', p_node, p_incarnation, p_pid);
    v_all boolean;
    v_kq text[];
    v_kt text[];
    v_budget boolean := EXISTS (SELECT 1 FROM eav.retry_budgets);
    v_owned boolean := EXISTS (SELECT 1 FROM eav.resource_owners);
BEGIN
    PERFORM 1 FROM eav.nodes n WHERE n.name = p_node AND n.incarnation = p_incarnation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'incarnation % is not the current incarnation of node "%"',
            p_incarnation, p_node USING ERRCODE = 'EA002';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'claim limit must be between 1 and 10000' USING ERRCODE = '22023';
    END IF;
    -- Before reading the switches (see the top of this file).
    PERFORM pg_advisory_xact_lock_shared(eav.kill_switch_lock_id());
    SELECT * INTO v_all, v_kq, v_kt FROM eav.kill_switch_scopes();
    IF v_all THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT s.id, s.run_at, s.resource_key FROM eav.steps s
        WHERE s.state = 'pending' AND s.run_at <= now()
          AND (p_queues IS NULL OR s.queue = ANY (p_queues))
          AND (v_kq IS NULL OR s.queue <> ALL (v_kq))
          AND (v_kt IS NULL OR s.tool <> ALL (v_kt))
          -- One running step per resource key (see the top of 0018).
          -- The costliest test, so the planner puts it last.
          AND (s.resource_key IS NULL OR eav.resource_take(s.resource_key))
        ORDER BY s.run_at, s.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), one AS (
        -- The key's lock is re-entrant: of two steps of one key in this
        -- batch, only the first is claimed; the other stays pending.
        SELECT p.id FROM picked p
        WHERE p.resource_key IS NULL
           OR NOT EXISTS (SELECT 1 FROM picked q
                          WHERE q.resource_key = p.resource_key
                            AND (q.run_at, q.id) < (p.run_at, p.id))
    ), c AS (
        UPDATE eav.steps s
        SET state = 'running', claim_epoch = s.claim_epoch + 1,
            attempt = s.attempt + 1, owner_node = p_node,
            owner_incarnation = p_incarnation, owner_pid = p_pid,
            claimed_at = now(), updated_at = now()
        FROM one WHERE s.id = one.id
        RETURNING s.id, s.task_id, s.claim_epoch, s.attempt, s.tool, s.input,
                  s.idempotency_key, s.trace_id, s.queue, s.resource_key
    ), rq AS (
        -- Retries in this claim, in line per budget that covers them.
        SELECT c.id, b.scope, b.target, row_number() OVER (
                   PARTITION BY b.scope, b.target ORDER BY c.id) AS place
        FROM c JOIN eav.retry_budgets b
          ON v_budget AND c.attempt > 1
         AND (b.scope = 'queue' AND b.target = c.queue
              OR b.scope = 'tool' AND b.target = c.tool)
    ), bu AS (
        UPDATE eav.retry_budgets b
        SET window_start = CASE WHEN b.window_start > now() - interval '1 minute'
                                THEN b.window_start ELSE now() END,
            used = CASE WHEN b.window_start > now() - interval '1 minute'
                        THEN b.used ELSE 0 END + x.n
        FROM (SELECT rq.scope, rq.target, count(*) AS n FROM rq
              GROUP BY rq.scope, rq.target) x
        WHERE b.scope = x.scope AND b.target = x.target
        RETURNING b.scope, b.target, b.per_min, b.used - x.n AS before,
                  b.window_start
    ), over AS (
        -- Past the budget: wait for the window this place fits in.
        SELECT rq.id, max(ceil(extract(epoch FROM bu.window_start
                   + make_interval(mins => ((bu.before + rq.place - 1)
                                            / bu.per_min)::integer)
                   - now()) * 1000) + (random() * 1000)::integer)::bigint AS wait_ms
        FROM rq JOIN bu ON bu.scope = rq.scope AND bu.target = rq.target
        WHERE bu.before + rq.place > bu.per_min
        GROUP BY rq.id
    ), a AS (
        INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, step_id, payload)
        SELECT 'step.claimed', 'success', v_actor, c.trace_id, c.task_id, c.id,
               jsonb_build_object('epoch', c.claim_epoch, 'attempt', c.attempt)
        FROM c
    ), probe AS (
        -- An unavailable tool whose probe is due lets one call through;
        -- the row lock makes that one call per probe interval across
        -- workers (a concurrent claim re-checks probe_after and skips).
        UPDATE eav.tools t
        SET probe_after = now() + make_interval(
                secs => (t.config->'health'->>'probe_ms')::numeric / 1000)
        WHERE t.health = 'unavailable' AND t.probe_after <= now()
          AND t.name IN (SELECT c.tool FROM c)
        RETURNING t.name
    ), g AS (
        SELECT c.*, t.config->>'builtin' AS builtin, t.timeout_ms, t.kind,
               CASE WHEN t.kind <> 'builtin' THEN t.config::text END AS config,
               -- Owned by another queue: refused before anything else.
               CASE WHEN v_owned AND c.resource_key IS NOT NULL
                         AND (eav.resource_owner_match(c.resource_key)).queue
                             <> c.queue
                    THEN 'conflict' END AS own_gate,
               CASE
                   WHEN eav.key_is_derived(c.idempotency_key, c.id) THEN NULL
                   WHEN k.step_id <> c.id
                        AND k.fingerprint <> eav.input_fingerprint(c.tool, c.input)
                       THEN 'collision'
                   WHEN EXISTS (SELECT 1 FROM eav.idempotency_outcomes o
                                WHERE o.tool = c.tool
                                  AND o.idempotency_key = c.idempotency_key)
                       THEN 'replay'
                   -- Another step with this key is running, or pending
                   -- ahead of it: one call per key at a time, and the
                   -- later step then finds its outcome.
                   WHEN EXISTS (SELECT 1 FROM eav.steps o
                                WHERE NOT eav.key_is_derived(o.idempotency_key, o.id)
                                  AND o.tool = c.tool
                                  AND o.idempotency_key = c.idempotency_key
                                  AND o.id <> c.id
                                  -- Only steps that will move: a held one
                                  -- waits for a person and a blocked one
                                  -- for its task, maybe forever, and a
                                  -- step must not sit pending behind them.
                                  AND (o.state = 'running'
                                       OR o.state = 'pending' AND o.id < c.id))
                       THEN 'wait'
               END AS key_gate,
               CASE
                   WHEN t.rate_limit_resets_at > now() THEN 'defer'
                   WHEN t.health IS DISTINCT FROM 'unavailable' THEN NULL
                   WHEN c.tool IN (SELECT name FROM probe)
                        AND row_number() OVER (PARTITION BY c.tool ORDER BY c.id) = 1
                       THEN NULL
                   WHEN t.config->'health'->>'when_unavailable' = 'fail' THEN 'fail'
                   ELSE 'defer'
               END AS tool_gate,
               'budget:' || over.wait_ms AS budget_gate
        FROM c LEFT JOIN eav.tools t ON t.name = c.tool
        LEFT JOIN over ON over.id = c.id
        LEFT JOIN eav.idempotency_keys k
               ON NOT eav.key_is_derived(c.idempotency_key, c.id)
              AND k.tool = c.tool AND k.idempotency_key = c.idempotency_key
    )
    SELECT g.id, g.task_id, g.claim_epoch, g.attempt, g.tool, g.builtin,
           g.input::text, g.idempotency_key, g.trace_id, g.timeout_ms, g.kind,
           g.config, coalesce(g.own_gate, g.key_gate, g.tool_gate,
           g.budget_gate)
    FROM g ORDER BY g.id;
    IF v_budget THEN
        PERFORM eav.retry_storm_raise(v_actor);
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.claim(text, bigint, integer, integer, text[]) IS 'Claims up to p_limit runnable steps (FOR UPDATE SKIP LOCKED) for a worker: state running, epoch and attempt + 1, owner set, step.claimed audited. Nothing of a kill switch''s scope is claimed (eav.kill_switch_engage). Each row carries what the worker needs to call the tool (builtin name, or kind and config) and its gate: NULL (call), defer (rate limited or unavailable: eav.step_defer), fail (unavailable, fail fast), replay (recorded outcome: eav.step_replay), collision (eav.step_collision), wait (another step with the same client key is running or comes first: deferred) budget:<ms> (a retry past its queue''s or tool''s retry budget: deferred ms) or conflict (the step''s resource key is owned by another queue: eav.step_authority_conflict). A step whose resource key has a running step, or an earlier step of the same key in the batch, is not claimed. Refused (EA002) for a superseded incarnation.';
