-- 0029_step_approval: a step may require approval because its task says
-- so (or the rule that made the task), not only because of its tool.
--
-- A step spec takes "requires_approval": true (the default policy: one
-- day, fail on expiry, no four eyes) or a policy object of the same
-- shape as a tool's ({"ttl_ms", "on_expiry", "four_eyes"}); it is kept
-- normalized in eav.steps.approval.  A rule's template holds step specs,
-- so a rule asks for it the same way.  When the step would become pending
-- it waits instead, as a policed tool's step does.  If its tool has a
-- policy too, the step's fields win, except four eyes, which either may
-- require and neither can waive.
--
-- The hot path pays one more NULL test in the triggers' WHEN clauses.

CREATE FUNCTION eav.approval_policy_check(p_policy jsonb, p_what text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_field text;
    v_p jsonb;
BEGIN
    IF jsonb_typeof(p_policy) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION '%: an approval policy must be a JSON object', p_what
            USING ERRCODE = '22023';
    END IF;
    SELECT k INTO v_field FROM jsonb_object_keys(p_policy) k
    WHERE k NOT IN ('ttl_ms', 'on_expiry', 'four_eyes') ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%: unknown field "%" in approval policy', p_what, v_field
            USING ERRCODE = '22023', HINT = 'Known: ttl_ms, on_expiry, four_eyes.';
    END IF;
    v_p := jsonb_build_object('ttl_ms', 86400000, 'on_expiry', 'fail',
                              'four_eyes', false) || p_policy;
    IF jsonb_typeof(v_p->'ttl_ms') <> 'number'
       OR (v_p->>'ttl_ms')::numeric <> trunc((v_p->>'ttl_ms')::numeric)
       OR (v_p->>'ttl_ms')::numeric NOT BETWEEN 1000 AND 2592000000 THEN
        RAISE EXCEPTION '%: approval ttl_ms must be an integer between 1000 and 2592000000, not %',
            p_what, v_p->'ttl_ms' USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(v_p->'on_expiry') IS DISTINCT FROM 'string'
       OR v_p->>'on_expiry' NOT IN ('fail', 'reissue') THEN
        RAISE EXCEPTION '%: approval on_expiry must be fail or reissue', p_what
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(v_p->'four_eyes') IS DISTINCT FROM 'boolean' THEN
        RAISE EXCEPTION '%: approval four_eyes must be true or false', p_what
            USING ERRCODE = '22023';
    END IF;
    RETURN v_p;
END;
$$;
COMMENT ON FUNCTION eav.approval_policy_check(jsonb, text) IS 'Validates an approval policy ({"ttl_ms": 1000..2592000000, default 1 day; "on_expiry": "fail" (default) or "reissue"; "four_eyes": false}) and returns it with the defaults filled in; raises 22023 naming p_what and the field.';

-- The policy of a step: its tool's and its own, the step's fields
-- winning but four eyes required by either.  NULL: none.
CREATE FUNCTION eav.approval_policy_merge(p_tool jsonb, p_step jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_tool IS NULL THEN p_step
        WHEN p_step IS NULL THEN p_tool
        ELSE p_tool || p_step || jsonb_build_object('four_eyes',
            coalesce((p_tool->>'four_eyes')::boolean, false)
            OR coalesce((p_step->>'four_eyes')::boolean, false))
    END
$$;
COMMENT ON FUNCTION eav.approval_policy_merge(jsonb, jsonb) IS 'A step''s approval policy from its tool''s (p_tool) and its own (p_step): the step''s ttl_ms and on_expiry win; four_eyes if either requires it; NULL if neither has one.';

ALTER TABLE eav.steps ADD COLUMN approval jsonb;
COMMENT ON COLUMN eav.steps.approval IS 'The step''s own approval policy (requires_approval in its spec, from its task or the rule that made it), normalized by eav.approval_policy_check; NULL: only its tool''s policy applies.';

CREATE OR REPLACE FUNCTION eav.tool_approval_set(p_tool text, p_policy jsonb,
    p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_p jsonb;
BEGIN
    -- One policy change at a time: approval_tools() is rebuilt from the
    -- table, and two changes at once could each miss the other's.
    PERFORM pg_advisory_xact_lock(hashtextextended('eav.approval_tools', 0));
    PERFORM 1 FROM eav.tools WHERE name = p_tool FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no tool "%"', p_tool USING ERRCODE = '22023';
    END IF;
    IF p_policy IS NOT NULL THEN
        v_p := eav.approval_policy_check(p_policy, format('tool "%s"', p_tool));
    END IF;
    UPDATE eav.tools SET approval = v_p, updated_at = now() WHERE name = p_tool;
    PERFORM eav.approval_tools_refresh();
    PERFORM eav.audit('tool.approval_set', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('tool', p_tool, 'policy', v_p));
    RETURN v_p;
END;
$$;

-- As in 0017, with the policy given: a step being inserted is not
-- visible yet, so its trigger passes the step's own.
DROP FUNCTION eav.approval_open(bigint, bigint, uuid, text, text);
CREATE FUNCTION eav.approval_open(p_step_id bigint, p_task_id bigint,
    p_trace uuid, p_tool text, p_actor text, p_policy jsonb)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_by text := (SELECT created_by FROM eav.tasks WHERE id = p_task_id);
    v_run_at timestamptz := (SELECT run_at FROM eav.steps WHERE id = p_step_id);
    v_id bigint;
BEGIN
    INSERT INTO eav.approvals (step_id, task_id, trace_id, tool, requested_by,
        expires_at, on_expiry, four_eyes)
    VALUES (p_step_id, p_task_id, p_trace, p_tool, v_by,
        -- From when the step is due, not from its enqueue.
        greatest(now(), v_run_at)
            + make_interval(secs => (p_policy->>'ttl_ms')::numeric / 1000),
        p_policy->>'on_expiry', (p_policy->>'four_eyes')::boolean)
    RETURNING id INTO v_id;
    PERFORM eav.audit('approval.requested', 'success', coalesce(v_by, p_actor),
        p_trace, p_task_id,
        p_step_id, jsonb_build_object('approval_id', v_id, 'tool', p_tool,
            'ttl_ms', p_policy->'ttl_ms', 'four_eyes', p_policy->'four_eyes'));
    PERFORM pg_notify('eav_approvals', v_id::text);
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION eav.approval_open(bigint, bigint, uuid, text, text, jsonb) IS 'Opens an approval for a step per the policy given (eav.approval_policy_merge of its tool''s and its own): audited approval.requested, NOTIFY eav_approvals.';

CREATE OR REPLACE FUNCTION eav.step_await_approval() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_p jsonb := eav.approval_policy_merge(
        (SELECT approval FROM eav.tools WHERE name = NEW.tool), NEW.approval);
BEGIN
    IF v_p IS NULL THEN
        RETURN NEW;     -- the tool's policy removed since approval_tools() was made
    END IF;
    NEW.state := 'waiting_approval';
    PERFORM eav.approval_open(NEW.id, NEW.task_id, NEW.trace_id, NEW.tool,
        'eav:approvals', v_p);
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION eav.step_await_approval() IS 'Trigger: a step that would become pending and has an approval policy (its tool''s, its own, or both: eav.approval_policy_merge) waits for approval instead.';

DROP TRIGGER steps_await_approval_insert ON eav.steps;
DROP TRIGGER steps_await_approval_ready ON eav.steps;
CREATE TRIGGER steps_await_approval_insert BEFORE INSERT ON eav.steps
    FOR EACH ROW
    WHEN (NEW.state = 'pending' AND (NEW.approval IS NOT NULL
          OR NEW.tool = ANY (eav.approval_tools())))
    EXECUTE FUNCTION eav.step_await_approval();
CREATE TRIGGER steps_await_approval_ready BEFORE UPDATE OF state ON eav.steps
    FOR EACH ROW
    WHEN (OLD.state = 'blocked' AND NEW.state = 'pending'
          AND (NEW.approval IS NOT NULL
               OR NEW.tool = ANY (eav.approval_tools())))
    EXECUTE FUNCTION eav.step_await_approval();

-- As in 0017, reissuing under the step's policy.
CREATE OR REPLACE FUNCTION eav.approval_expire(p_actor text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    a eav.approvals;
    v_n integer := 0;
    v_new bigint;
BEGIN
    FOR a IN
        SELECT * FROM eav.approvals
        WHERE state = 'open' AND expires_at <= now()
        ORDER BY expires_at LIMIT 100 FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE eav.approvals SET state = 'expired', decided_by = p_actor,
            decided_at = now() WHERE id = a.id;
        IF a.on_expiry = 'reissue' THEN
            -- The policy as it is now: the tool's may have changed.
            v_new := eav.approval_open(a.step_id, a.task_id, a.trace_id, a.tool,
                p_actor, coalesce(eav.approval_policy_merge(
                    (SELECT approval FROM eav.tools WHERE name = a.tool),
                    (SELECT approval FROM eav.steps WHERE id = a.step_id)),
                    jsonb_build_object('ttl_ms', 86400000, 'on_expiry', 'fail',
                        'four_eyes', a.four_eyes)));
        END IF;
        PERFORM eav.audit('approval.expired', 'failure', p_actor, a.trace_id,
            a.task_id, a.step_id, jsonb_build_object('approval_id', a.id,
                'on_expiry', a.on_expiry, 'reissued_as', v_new));
        IF a.on_expiry = 'fail' THEN
            PERFORM eav.approval_fail_step(a, format(
                'approval %s expired at %s without a decision', a.id, a.expires_at),
                p_actor);
        END IF;
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.approval_expire(text) IS 'Called by eavd''s sweep: open approvals past expires_at become expired (audited approval.expired); per their policy the step fails (and its task) or a new approval is issued. Returns how many expired.';

-- As in 0018, with requires_approval.
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
    v_approval jsonb;
BEGIN
    IF jsonb_typeof(p_step) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'step %: must be a JSON object', p_n USING ERRCODE = '22023';
    END IF;
    SELECT k INTO v_field FROM jsonb_object_keys(p_step) AS k
    WHERE k NOT IN ('tool', 'input', 'idempotency_key', 'max_attempts',
                    'resource', 'requires_approval')
    ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'step %: unknown field "%"', p_n, v_field
            USING ERRCODE = '22023',
                  HINT = 'Known fields: tool, input, idempotency_key, max_attempts, resource, requires_approval.';
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
    IF p_step ? 'requires_approval' THEN
        IF jsonb_typeof(p_step->'requires_approval') = 'object' THEN
            v_approval := eav.approval_policy_check(p_step->'requires_approval',
                format('step %s: "requires_approval"', p_n));
        ELSIF p_step->'requires_approval' = 'true' THEN
            v_approval := eav.approval_policy_check('{}',
                format('step %s: "requires_approval"', p_n));
        ELSIF p_step->'requires_approval' <> 'false' THEN
            RAISE EXCEPTION 'step %: "requires_approval" must be true, false or an approval policy object',
                p_n USING ERRCODE = '22023',
                HINT = 'A policy: {"ttl_ms", "on_expiry": "fail"|"reissue", "four_eyes"}.';
        END IF;
    END IF;
    RETURN jsonb_build_object('tool', p_step->'tool',
        'input', coalesce(p_step->'input', '{}'),
        'idempotency_key', v_key, 'max_attempts', v_max,
        'resource', p_step->>'resource', 'approval', v_approval);
END;
$$;
COMMENT ON FUNCTION eav.step_spec_check(jsonb, integer, integer) IS 'Validates one step object of an enqueue (fields, tool, input size, max_attempts, idempotency key, resource key, requires_approval: true, false or a policy, returned as "approval") and returns it normalized.';

-- As in 0018, storing each step's approval policy.
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
                           resource_key, approval)
    SELECT eav.step_id(v_task, n::integer), v_task, n, p_queue, v_trace,
           s->>'tool', s->'input',
           coalesce(s->>'idempotency_key', format('eav:%s:%s', v_task, n)),
           CASE WHEN n = 1 THEN 'pending' ELSE 'blocked' END,
           (s->>'max_attempts')::integer, v_run_at, s->>'resource',
           CASE WHEN jsonb_typeof(s->'approval') = 'object' THEN s->'approval' END
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
COMMENT ON FUNCTION eav.task_enqueue(text, text, jsonb, text, uuid, bigint, timestamptz, bigint) IS 'Creates a task with its ordered steps (a JSON array of {"tool", "input", "idempotency_key", "max_attempts", "resource", "requires_approval"}); step 1 is pending, the rest blocked. Audited task.enqueued. Returns the task id.';
