-- 0002_transitions: every state transition of eav, one SQL function each.
--
-- C callers and operators in psql call the same functions.  Each writes its
-- audit row(s) in its own transaction.  Errors use these SQLSTATEs:
--   22023  invalid parameter (bad input; the message names the field)
--   54000  a configured size limit was exceeded
--   EA001  stale claim epoch (fencing)
--   EA002  claim from an incarnation that is not the node's current one
--   EA003  the transition is not allowed from the current state
--   EA004  no such task or step
--   EA005  a database session that had to end did not (retry later)
--   EA009  audit rows cannot be changed

CREATE FUNCTION eav.default_actor() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT 'operator:' || session_user $$;
COMMENT ON FUNCTION eav.default_actor() IS 'Actor recorded when a caller names none: operator:<database user>.';

CREATE FUNCTION eav.audit(p_type text, p_outcome text, p_actor text,
    p_trace_id uuid, p_task_id bigint, p_step_id bigint,
    p_payload jsonb DEFAULT '{}') RETURNS void
LANGUAGE sql AS $$
    INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, step_id, payload)
    VALUES (p_type, p_outcome, p_actor, p_trace_id, p_task_id, p_step_id,
            coalesce(p_payload, '{}'));
$$;
COMMENT ON FUNCTION eav.audit(text, text, text, uuid, bigint, bigint, jsonb) IS 'Appends one audit event; called by the transition functions inside their transaction.';

CREATE FUNCTION eav.step_id(p_task_id bigint, p_ordinal integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT p_task_id * 128 + p_ordinal $$;
COMMENT ON FUNCTION eav.step_id(bigint, integer) IS 'Id of step p_ordinal of task p_task_id; a task''s steps are ids step_id(t, 1) .. step_id(t, 127).';

CREATE FUNCTION eav.setting(p_name text) RETURNS bigint
LANGUAGE sql STABLE AS $$ SELECT value FROM eav.settings WHERE name = p_name $$;
COMMENT ON FUNCTION eav.setting(text) IS 'Value of an eav.settings row.';

CREATE FUNCTION eav.retry_delay(p_base_ms integer, p_max_ms integer, p_attempt integer)
RETURNS interval
LANGUAGE sql VOLATILE AS $$
    -- Exponential back-off with "equal jitter": 50-100 % of the capped value,
    -- so a burst of failures does not retry in lock-step.
    SELECT make_interval(secs =>
        least(p_max_ms::float8, p_base_ms::float8 * 2 ^ least(greatest(p_attempt - 1, 0), 40))
        * (0.5 + random() / 2) / 1000.0)
$$;
COMMENT ON FUNCTION eav.retry_delay(integer, integer, integer) IS 'Back-off before the next attempt after attempt n: min(max, base*2^(n-1)) scaled by a random 50-100 %.';

-- Alarms ------------------------------------------------------------------

CREATE FUNCTION eav.alarm_raise(p_type text, p_severity text, p_subject text,
    p_message text, p_details jsonb DEFAULT '{}', p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
    v_actor text := coalesce(p_actor, eav.default_actor());
BEGIN
    IF p_severity IS NULL OR p_severity NOT IN ('info', 'warning', 'critical') THEN
        RAISE EXCEPTION 'alarm severity must be info, warning or critical'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO eav.alarms (type, severity, subject, message, details)
    VALUES (p_type, p_severity, p_subject, p_message, coalesce(p_details, '{}'))
    ON CONFLICT (type, subject) WHERE state <> 'resolved' DO UPDATE
        SET raise_count = eav.alarms.raise_count + 1,
            last_raised_at = now(),
            message = EXCLUDED.message,
            details = EXCLUDED.details,
            severity = EXCLUDED.severity
    RETURNING id INTO v_id;
    PERFORM eav.audit('alarm.raised', 'failure', v_actor, NULL, NULL, NULL,
        jsonb_build_object('alarm_id', v_id, 'type', p_type,
                           'severity', p_severity, 'subject', p_subject,
                           'message', p_message));
    PERFORM pg_notify('eav_alarm', v_id::text);
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION eav.alarm_raise(text, text, text, text, jsonb, text) IS 'Raises an alarm (or counts up the open one of the same type and subject), audits alarm.raised and notifies eav_alarm.';

CREATE FUNCTION eav.alarm_ack(p_id bigint, p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
BEGIN
    UPDATE eav.alarms SET state = 'acked', acked_at = now(), acked_by = v_actor
    WHERE id = p_id AND state = 'open';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'alarm % does not exist or is not open', p_id
            USING ERRCODE = 'EA003';
    END IF;
    PERFORM eav.audit('alarm.acked', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('alarm_id', p_id));
END;
$$;
COMMENT ON FUNCTION eav.alarm_ack(bigint, text) IS 'Acknowledges an open alarm (audited).';

CREATE FUNCTION eav.alarm_resolve(p_id bigint, p_actor text DEFAULT NULL,
    p_note text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
BEGIN
    UPDATE eav.alarms SET state = 'resolved', resolved_at = now(),
        resolved_by = v_actor
    WHERE id = p_id AND state <> 'resolved';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'alarm % does not exist or is already resolved', p_id
            USING ERRCODE = 'EA003';
    END IF;
    PERFORM eav.audit('alarm.resolved', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('alarm_id', p_id, 'note', p_note));
END;
$$;
COMMENT ON FUNCTION eav.alarm_resolve(bigint, text, text) IS 'Resolves an alarm (audited).';

-- Resolves the open alarms about one subject, e.g. when the step they
-- concern has been resolved by an operator.
CREATE FUNCTION eav.alarm_resolve_subject(p_type text, p_subject text, p_actor text)
RETURNS void
LANGUAGE sql AS $$
    WITH r AS (
        UPDATE eav.alarms SET state = 'resolved', resolved_at = now(),
            resolved_by = p_actor
        WHERE type = p_type AND subject = p_subject AND state <> 'resolved'
        RETURNING id
    )
    INSERT INTO eav.audit_events (type, outcome, actor, payload)
    SELECT 'alarm.resolved', 'success', p_actor,
           jsonb_build_object('alarm_id', r.id, 'note', 'subject resolved')
    FROM r;
$$;
COMMENT ON FUNCTION eav.alarm_resolve_subject(text, text, text) IS 'Resolves every unresolved alarm of a type about a subject (audited).';

-- Tools -------------------------------------------------------------------

CREATE FUNCTION eav.tool_register(p_name text, p_kind text, p_config jsonb,
    p_idempotent boolean, p_timeout_ms integer DEFAULT 30000,
    p_description text DEFAULT '', p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_existed boolean;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid tool name "%"', p_name
            USING ERRCODE = '22023',
                  HINT = 'Use lowercase letters, digits, _ . -; start with a letter; at most 63 characters.';
    END IF;
    IF p_kind IS DISTINCT FROM 'builtin' THEN
        RAISE EXCEPTION 'tool kind "%" is not supported', p_kind
            USING ERRCODE = '22023', HINT = 'Supported kinds: builtin.';
    END IF;
    IF p_config IS NULL OR jsonb_typeof(p_config) <> 'object'
       OR (p_config->>'builtin') IS NULL
       OR (p_config->>'builtin') NOT IN ('noop', 'sleep', 'fail', 'ledger.transfer') THEN
        RAISE EXCEPTION 'builtin tool config must be {"builtin": "noop"|"sleep"|"fail"|"ledger.transfer"}'
            USING ERRCODE = '22023';
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(p_config)) <> 1 THEN
        RAISE EXCEPTION 'builtin tool config has unknown fields'
            USING ERRCODE = '22023';
    END IF;
    IF p_idempotent IS NULL THEN
        RAISE EXCEPTION 'idempotent must be true or false' USING ERRCODE = '22023';
    END IF;
    IF p_timeout_ms IS NULL OR p_timeout_ms NOT BETWEEN 1 AND 86400000 THEN
        RAISE EXCEPTION 'timeout_ms must be between 1 and 86400000'
            USING ERRCODE = '22023';
    END IF;
    v_existed := EXISTS (SELECT 1 FROM eav.tools WHERE name = p_name);
    INSERT INTO eav.tools (name, kind, config, idempotent, timeout_ms, description)
    VALUES (p_name, p_kind, p_config, p_idempotent, p_timeout_ms,
            coalesce(p_description, ''))
    ON CONFLICT (name) DO UPDATE
        SET kind = EXCLUDED.kind, config = EXCLUDED.config,
            idempotent = EXCLUDED.idempotent, timeout_ms = EXCLUDED.timeout_ms,
            description = EXCLUDED.description, updated_at = now();
    PERFORM eav.audit(CASE WHEN v_existed THEN 'tool.updated' ELSE 'tool.registered' END,
        'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('tool', p_name, 'kind', p_kind, 'config', p_config,
                           'idempotent', p_idempotent, 'timeout_ms', p_timeout_ms));
END;
$$;
COMMENT ON FUNCTION eav.tool_register(text, text, jsonb, boolean, integer, text, text) IS 'Registers or changes a tool (audited tool.registered / tool.updated).';

-- Enqueue -----------------------------------------------------------------

-- Checks one step object of an enqueue and returns it normalized:
-- {"tool", "input", "idempotency_key" (may be null), "max_attempts"}.
CREATE FUNCTION eav.step_spec_check(p_step jsonb, p_n integer, p_default_max integer)
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
    WHERE k NOT IN ('tool', 'input', 'idempotency_key', 'max_attempts')
    ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'step %: unknown field "%"', p_n, v_field
            USING ERRCODE = '22023',
                  HINT = 'Known fields: tool, input, idempotency_key, max_attempts.';
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
    RETURN jsonb_build_object('tool', p_step->'tool',
        'input', coalesce(p_step->'input', '{}'),
        'idempotency_key', v_key, 'max_attempts', v_max);
END;
$$;
COMMENT ON FUNCTION eav.step_spec_check(jsonb, integer, integer) IS 'Validates one step object of an enqueue (fields, tool, input size, max_attempts, idempotency key) and returns it normalized.';

CREATE FUNCTION eav.task_enqueue(p_queue text, p_kind text, p_steps jsonb,
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
                           idempotency_key, state, max_attempts, run_at)
    SELECT eav.step_id(v_task, n::integer), v_task, n, p_queue, v_trace,
           s->>'tool', s->'input',
           coalesce(s->>'idempotency_key', format('eav:%s:%s', v_task, n)),
           CASE WHEN n = 1 THEN 'pending' ELSE 'blocked' END,
           (s->>'max_attempts')::integer, v_run_at
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
COMMENT ON FUNCTION eav.task_enqueue(text, text, jsonb, text, uuid, bigint, timestamptz, bigint) IS 'Creates a task with its ordered steps (a JSON array of {"tool", "input", "idempotency_key", "max_attempts"}); step 1 is pending, the rest blocked. Audited task.enqueued. Returns the task id.';

CREATE FUNCTION eav.enqueue(p_tool text, p_input jsonb DEFAULT '{}',
    p_queue text DEFAULT 'default', p_kind text DEFAULT NULL,
    p_max_attempts integer DEFAULT NULL, p_idempotency_key text DEFAULT NULL,
    p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT eav.task_enqueue(p_queue, coalesce(p_kind, p_tool),
        jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
            'tool', p_tool, 'input', p_input,
            'max_attempts', p_max_attempts,
            'idempotency_key', p_idempotency_key))),
        p_actor);
$$;
COMMENT ON FUNCTION eav.enqueue(text, jsonb, text, text, integer, text, text) IS 'Shorthand for a one-step task: select eav.enqueue(''sleep'', ''{"ms": 500}'').';

-- Nodes -------------------------------------------------------------------

CREATE FUNCTION eav.node_start(p_node text, p_host text, p_pid integer,
    p_version text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_inc bigint;
    v_prev bigint;
BEGIN
    IF p_node IS NULL OR length(p_node) NOT BETWEEN 1 AND 63 THEN
        RAISE EXCEPTION 'node name must be 1 to 63 characters' USING ERRCODE = '22023';
    END IF;
    INSERT INTO eav.incarnations (node, host, pid, version)
    VALUES (p_node, p_host, p_pid, p_version) RETURNING id INTO v_inc;
    SELECT incarnation INTO v_prev FROM eav.nodes WHERE name = p_node FOR UPDATE;
    INSERT INTO eav.nodes (name, incarnation, host, pid, version, started_at)
    VALUES (p_node, v_inc, p_host, p_pid, p_version, now())
    ON CONFLICT (name) DO UPDATE
        SET incarnation = EXCLUDED.incarnation, host = EXCLUDED.host,
            pid = EXCLUDED.pid, version = EXCLUDED.version,
            started_at = EXCLUDED.started_at;
    PERFORM eav.audit('node.started', 'success',
        format('supervisor:%s/%s', p_node, v_inc), NULL, NULL, NULL,
        jsonb_build_object('node', p_node, 'incarnation', v_inc,
                           'previous_incarnation', v_prev, 'host', p_host,
                           'pid', p_pid, 'version', p_version));
    RETURN v_inc;
END;
$$;
COMMENT ON FUNCTION eav.node_start(text, text, integer, text) IS 'Starts a new incarnation of a node (from then on claims by older incarnations are refused); audited node.started. Returns the incarnation id.';

CREATE FUNCTION eav.node_stop(p_node text, p_incarnation bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := format('supervisor:%s/%s', p_node, p_incarnation);
BEGIN
    UPDATE eav.incarnations SET stopped_at = now(), stop_reason = 'clean'
    WHERE id = p_incarnation AND node = p_node AND stopped_at IS NULL;
    UPDATE eav.processes SET state = 'down', pid = NULL, updated_at = now()
    WHERE node = p_node AND incarnation = p_incarnation;
    PERFORM eav.audit('node.stopped', 'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('node', p_node, 'incarnation', p_incarnation));
END;
$$;
COMMENT ON FUNCTION eav.node_stop(text, bigint) IS 'Records a clean stop of an incarnation (audited node.stopped).';

CREATE FUNCTION eav.process_event(p_node text, p_incarnation bigint,
    p_kind text, p_slot integer, p_pid integer, p_state text,
    p_detail text DEFAULT NULL, p_restarts integer DEFAULT 0)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := format('supervisor:%s/%s', p_node, p_incarnation);
    v_type text;
    v_outcome text := 'success';
BEGIN
    INSERT INTO eav.processes AS p (node, kind, slot, incarnation, pid, state,
        started_at, ready_at, exited_at, last_exit, restarts)
    VALUES (p_node, p_kind, p_slot, p_incarnation, p_pid, p_state,
        CASE WHEN p_state = 'starting' THEN now() END,
        CASE WHEN p_state = 'up' THEN now() END,
        CASE WHEN p_state IN ('backoff', 'down', 'failed') THEN now() END,
        CASE WHEN p_state IN ('backoff', 'down', 'failed') THEN p_detail END,
        coalesce(p_restarts, 0))
    ON CONFLICT (node, kind, slot) DO UPDATE SET
        incarnation = EXCLUDED.incarnation,
        pid = EXCLUDED.pid,
        state = EXCLUDED.state,
        started_at = coalesce(EXCLUDED.started_at, p.started_at),
        ready_at = CASE WHEN EXCLUDED.state = 'starting' THEN NULL
                        ELSE coalesce(EXCLUDED.ready_at, p.ready_at) END,
        exited_at = coalesce(EXCLUDED.exited_at, p.exited_at),
        last_exit = coalesce(EXCLUDED.last_exit, p.last_exit),
        restarts = EXCLUDED.restarts,
        updated_at = now();
    v_type := CASE p_state
        WHEN 'starting' THEN 'process.spawned'
        WHEN 'up' THEN 'process.ready'
        WHEN 'stopping' THEN 'process.stopping'
        WHEN 'failed' THEN 'process.failed'
        ELSE 'process.exited' END;
    IF p_state = 'failed' OR (p_state IN ('backoff', 'down')
            AND p_detail IS DISTINCT FROM 'exited with code 0') THEN
        v_outcome := 'failure';
    END IF;
    PERFORM eav.audit(v_type, v_outcome, v_actor, NULL, NULL, NULL,
        jsonb_build_object('kind', p_kind, 'slot', p_slot, 'pid', p_pid,
                           'state', p_state, 'detail', p_detail,
                           'restarts', p_restarts));
END;
$$;
COMMENT ON FUNCTION eav.process_event(text, bigint, text, integer, integer, text, text, integer) IS 'Records a child process state change reported by eavd (audited process.spawned / ready / stopping / exited / failed).';

-- Claim -------------------------------------------------------------------

CREATE FUNCTION eav.claim(p_node text, p_incarnation bigint, p_pid integer,
    p_limit integer, p_queues text[] DEFAULT NULL)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_actor text := format('worker:%s/%s/%s', p_node, p_incarnation, p_pid);
BEGIN
    -- A worker of a superseded incarnation must not claim: its new
    -- incarnation has already reconciled (or is reconciling) its steps.
    PERFORM 1 FROM eav.nodes n WHERE n.name = p_node AND n.incarnation = p_incarnation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'incarnation % is not the current incarnation of node "%"',
            p_incarnation, p_node USING ERRCODE = 'EA002';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'claim limit must be between 1 and 10000' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT s.id FROM eav.steps s
        WHERE s.state = 'pending' AND s.run_at <= now()
          AND (p_queues IS NULL OR s.queue = ANY (p_queues))
        ORDER BY s.run_at, s.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), c AS (
        UPDATE eav.steps s
        SET state = 'running', claim_epoch = s.claim_epoch + 1,
            attempt = s.attempt + 1, owner_node = p_node,
            owner_incarnation = p_incarnation, owner_pid = p_pid,
            claimed_at = now(), updated_at = now()
        FROM picked WHERE s.id = picked.id
        RETURNING s.id, s.task_id, s.claim_epoch, s.attempt, s.tool, s.input,
                  s.idempotency_key, s.trace_id
    ), a AS (
        INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, step_id, payload)
        SELECT 'step.claimed', 'success', v_actor, c.trace_id, c.task_id, c.id,
               jsonb_build_object('epoch', c.claim_epoch, 'attempt', c.attempt)
        FROM c
    )
    SELECT c.id, c.task_id, c.claim_epoch, c.attempt, c.tool,
           t.config->>'builtin', c.input::text, c.idempotency_key, c.trace_id,
           t.timeout_ms
    FROM c LEFT JOIN eav.tools t ON t.name = c.tool
    ORDER BY c.id;
END;
$$;
COMMENT ON FUNCTION eav.claim(text, bigint, integer, integer, text[]) IS 'Claims up to p_limit runnable steps (FOR UPDATE SKIP LOCKED) for a worker: state running, epoch and attempt + 1, owner set, step.claimed audited. Refused (EA002) for a superseded incarnation.';

-- Completion ----------------------------------------------------------------

-- Moves tasks forward after some of their steps reached succeeded or
-- failed: unblocks the next step, or finishes the task; a failed step
-- cancels the steps behind it.
CREATE FUNCTION eav.advance_tasks(p_step_ids bigint[], p_actor text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_ready integer;
BEGIN
    WITH d AS (
        SELECT s.id, s.task_id, s.ordinal, s.state, s.trace_id, t.step_count
        FROM eav.steps s JOIN eav.tasks t ON t.id = s.task_id
        WHERE s.id = ANY (p_step_ids) AND s.state IN ('succeeded', 'failed')
    ), nxt AS (
        UPDATE eav.steps n SET state = 'pending', run_at = now(), updated_at = now()
        FROM d
        WHERE d.state = 'succeeded' AND n.id = d.id + 1
          AND n.task_id = d.task_id AND n.state = 'blocked'
        RETURNING n.id, n.task_id, n.trace_id, n.ordinal
    ), fin AS (
        UPDATE eav.tasks t
        SET state = CASE WHEN d.state = 'succeeded' THEN 'succeeded' ELSE 'failed' END,
            finished_at = now()
        FROM d
        WHERE t.id = d.task_id AND t.state = 'active'
          AND (d.state = 'failed' OR d.ordinal = d.step_count)
        RETURNING t.id, t.state, t.trace_id
    ), canc AS (
        UPDATE eav.steps r SET state = 'cancelled', finished_at = now(),
            updated_at = now()
        FROM d
        WHERE d.state = 'failed' AND r.state = 'blocked'
          AND r.id BETWEEN d.id + 1 AND eav.step_id(d.task_id, 127)
        RETURNING r.id, r.task_id, r.trace_id
    ), aud AS (
        INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, step_id, payload)
        SELECT 'step.ready', 'success', p_actor, nxt.trace_id, nxt.task_id, nxt.id,
               jsonb_build_object('ordinal', nxt.ordinal)
        FROM nxt
        UNION ALL
        SELECT 'task.' || fin.state,
               CASE WHEN fin.state = 'succeeded' THEN 'success' ELSE 'failure' END,
               p_actor, fin.trace_id, fin.id, NULL, '{}'::jsonb
        FROM fin
        UNION ALL
        SELECT 'step.cancelled', 'success', p_actor, canc.trace_id, canc.task_id,
               canc.id, '{"reason": "an earlier step failed"}'::jsonb
        FROM canc
    )
    SELECT count(*) INTO v_ready FROM nxt;
    IF v_ready > 0 THEN
        PERFORM pg_notify('eav_steps', '');
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.advance_tasks(bigint[], text) IS 'After steps succeeded or failed: makes the next step pending (step.ready), or finishes the task (task.succeeded / task.failed); a failure cancels the blocked steps behind it.';

CREATE FUNCTION eav.complete(p_actor text, p_step_ids bigint[], p_epochs bigint[],
    p_outcomes text[], p_results jsonb[], p_errors text[])
RETURNS TABLE (step_id bigint, status text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_n integer := cardinality(p_step_ids);
    v_ids bigint[];
    v_states text[];
    v_terminal bigint[];
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF v_n IS NULL OR cardinality(p_epochs) IS DISTINCT FROM v_n
       OR cardinality(p_outcomes) IS DISTINCT FROM v_n
       OR cardinality(p_results) IS DISTINCT FROM v_n
       OR cardinality(p_errors) IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'complete needs arrays of equal length' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_outcomes) o
               WHERE o IS NULL OR o NOT IN ('succeeded', 'failed', 'retry', 'release')) THEN
        RAISE EXCEPTION 'outcome must be succeeded, failed, retry or release'
            USING ERRCODE = '22023';
    END IF;

    -- A retried or released step goes back to pending; lock its task so a
    -- concurrent cancel either sees it pending or waits for us.
    IF 'retry' = ANY (p_outcomes) OR 'release' = ANY (p_outcomes) THEN
        PERFORM 1 FROM eav.tasks t
        WHERE t.id IN (SELECT s.task_id FROM eav.steps s
                       JOIN unnest(p_step_ids, p_outcomes) AS u(id, outcome)
                         ON u.id = s.id
                       WHERE u.outcome IN ('retry', 'release'))
        ORDER BY t.id FOR SHARE;
    END IF;

    WITH i AS (
        SELECT * FROM unnest(p_step_ids, p_epochs, p_outcomes, p_results, p_errors)
            AS u(id, epoch, outcome, result, error)
    ), u AS (
        UPDATE eav.steps s SET
            state = CASE
                WHEN i.outcome IN ('retry', 'release') AND t.state <> 'active' THEN 'cancelled'
                WHEN i.outcome = 'succeeded' THEN 'succeeded'
                WHEN i.outcome = 'failed' THEN 'failed'
                WHEN i.outcome = 'retry' AND s.attempt < s.max_attempts THEN 'pending'
                WHEN i.outcome = 'retry' THEN 'failed'
                ELSE 'pending' END,
            attempt = CASE WHEN i.outcome = 'release' THEN s.attempt - 1 ELSE s.attempt END,
            run_at = CASE
                WHEN i.outcome = 'retry' AND s.attempt < s.max_attempts
                    THEN now() + eav.retry_delay(q.retry_base_ms, q.retry_max_ms, s.attempt)
                WHEN i.outcome = 'release' THEN now()
                ELSE s.run_at END,
            result = CASE WHEN i.outcome = 'succeeded' THEN i.result ELSE s.result END,
            error = CASE WHEN i.outcome IN ('failed', 'retry') THEN i.error ELSE s.error END,
            finished_at = CASE
                WHEN i.outcome IN ('succeeded', 'failed')
                  OR (i.outcome = 'retry' AND s.attempt >= s.max_attempts)
                  OR t.state <> 'active' THEN now() END,
            updated_at = now()
        FROM i, eav.tasks t, eav.queues q
        WHERE s.id = i.id AND s.id = ANY (p_step_ids)
          AND s.claim_epoch = i.epoch AND s.state = 'running'
          AND t.id = s.task_id AND q.name = s.queue
        RETURNING s.id, s.task_id, s.trace_id, s.state, s.attempt, s.max_attempts,
                  s.claim_epoch, s.run_at, i.outcome, i.error
    ), a AS (
        INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, step_id, payload)
        SELECT CASE
                   WHEN u.state = 'succeeded' THEN 'step.succeeded'
                   WHEN u.state = 'failed' THEN 'step.failed'
                   WHEN u.state = 'cancelled' THEN 'step.cancelled'
                   WHEN u.outcome = 'release' THEN 'step.released'
                   ELSE 'step.retry_scheduled' END,
               CASE WHEN u.state IN ('succeeded', 'cancelled') OR u.outcome = 'release'
                    THEN 'success' ELSE 'failure' END,
               p_actor, u.trace_id, u.task_id, u.id,
               jsonb_strip_nulls(jsonb_build_object(
                   'epoch', u.claim_epoch, 'attempt', u.attempt,
                   'max_attempts', u.max_attempts,
                   'error', CASE WHEN u.outcome <> 'release' THEN u.error END,
                   'reason', CASE WHEN u.outcome = 'release' THEN u.error END,
                   'run_at', CASE WHEN u.state = 'pending' THEN u.run_at END))
        FROM u
    )
    SELECT array_agg(u.id), array_agg(u.state) INTO v_ids, v_states FROM u;

    SELECT array_agg(x.id) INTO v_terminal
    FROM unnest(v_ids, v_states) AS x(id, state)
    WHERE x.state IN ('succeeded', 'failed');
    IF v_terminal IS NOT NULL THEN
        PERFORM eav.advance_tasks(v_terminal, p_actor);
    END IF;
    IF 'release' = ANY (p_outcomes) THEN
        PERFORM pg_notify('eav_steps', '');
    END IF;

    IF cardinality(v_ids) = v_n THEN
        RETURN QUERY SELECT x.id, x.state FROM unnest(v_ids, v_states) AS x(id, state);
        RETURN;
    END IF;

    -- Completions that did not apply: a repeat of one already applied (the
    -- worker lost the COMMIT acknowledgement), or a stale epoch (fenced).
    RETURN QUERY
    WITH i AS (
        SELECT * FROM unnest(p_step_ids, p_epochs) AS u(id, epoch)
    ), miss AS (
        SELECT i.id, i.epoch, s.claim_epoch AS cur_epoch, s.state, s.task_id,
               s.trace_id,
               (s.id IS NOT NULL AND s.claim_epoch = i.epoch AND s.state <> 'running'
                AND NOT EXISTS (SELECT 1 FROM eav.unknown_outcomes uo
                                WHERE uo.step_id = i.id AND uo.claim_epoch = i.epoch)
               ) AS applied
        FROM i LEFT JOIN eav.steps s ON s.id = i.id
        WHERE i.id <> ALL (coalesce(v_ids, '{}'))
    ), f AS (
        INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, step_id, payload)
        SELECT 'fence.rejected', 'refused', p_actor, miss.trace_id, miss.task_id,
               miss.id, jsonb_build_object('epoch', miss.epoch,
                   'current_epoch', miss.cur_epoch, 'state', miss.state)
        FROM miss WHERE NOT miss.applied
    )
    SELECT x.id, x.state FROM unnest(v_ids, v_states) AS x(id, state)
    UNION ALL
    SELECT miss.id, CASE WHEN miss.applied THEN 'already_applied' ELSE 'fenced' END
    FROM miss;
END;
$$;
COMMENT ON FUNCTION eav.complete(text, bigint[], bigint[], text[], jsonb[], text[]) IS 'Completes claimed steps in one transaction. Outcomes: succeeded, failed (permanent), retry (back-off, or failed when attempts are exhausted), release (not started; attempt refunded). A completion must carry its claim epoch: a stale one is refused and audited fence.rejected; a repeat of an applied one returns already_applied. Returns each step''s new state, already_applied or fenced.';

CREATE FUNCTION eav.complete_batch(p_actor text, p_batch jsonb)
RETURNS TABLE (step_id bigint, status text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
-- PL/pgSQL, not SQL: a SQL function is parsed and planned at every call.
DECLARE
    v_ids bigint[];
    v_epochs bigint[];
    v_outcomes text[];
    v_results jsonb[];
    v_errors text[];
BEGIN
    SELECT array_agg((e->>'id')::bigint ORDER BY n),
           array_agg((e->>'epoch')::bigint ORDER BY n),
           array_agg(e->>'outcome' ORDER BY n),
           array_agg(CASE WHEN jsonb_typeof(e->'result') <> 'null'
                          THEN e->'result' END ORDER BY n),
           array_agg(e->>'error' ORDER BY n)
    INTO v_ids, v_epochs, v_outcomes, v_results, v_errors
    FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS a(e, n);
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT c.step_id, c.status FROM eav.complete(p_actor, v_ids,
        v_epochs, v_outcomes, v_results, v_errors) c;
END;
$$;
COMMENT ON FUNCTION eav.complete_batch(text, jsonb) IS 'eav.complete taking one JSON array of {"id", "epoch", "outcome", "result", "error"}, as eav-worker sends it.';

CREATE FUNCTION eav.complete_and_claim(p_actor text, p_batch jsonb,
    p_node text, p_incarnation bigint, p_pid integer, p_limit integer,
    p_queues text[] DEFAULT NULL)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer, status text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
-- A worker's whole cycle in one transaction, so one WAL flush instead of
-- two: the completions (eav.complete_batch) first, then a claim
-- (eav.claim).  Both keep their guards; a crash anywhere is reconciled
-- exactly as if they had been separate.
BEGIN
    RETURN QUERY
    SELECT c.step_id, NULL::bigint, NULL::bigint, NULL::integer, NULL::text,
           NULL::text, NULL::text, NULL::text, NULL::uuid, NULL::integer,
           c.status
    FROM eav.complete_batch(p_actor, p_batch) c
    WHERE c.status IN ('fenced', 'already_applied');
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT c.step_id, c.task_id, c.claim_epoch, c.attempt, c.tool,
               c.builtin, c.input, c.idempotency_key, c.trace_id,
               c.timeout_ms, 'claimed'::text
        FROM eav.claim(p_node, p_incarnation, p_pid, p_limit, p_queues) c;
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.complete_and_claim(text, jsonb, text, bigint, integer, integer, text[]) IS 'A worker''s cycle in one transaction: completes a batch (eav.complete_batch; rows with status fenced or already_applied report completions that did not apply) and, if p_limit > 0, claims up to p_limit steps (rows with status claimed).';

-- Ledger: the reference exactly-once tool -------------------------------------

-- The effect, its idempotency outcome and the step's completion commit in
-- this one transaction, so no crash can separate them.
CREATE FUNCTION eav.ledger_transfer(p_step_id bigint, p_epoch bigint, p_actor text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s eav.steps;
    o eav.idempotency_outcomes;
    v_from text;
    v_to text;
    v_amount bigint;
    v_err text;
    v_result jsonb;
    v_status text;
BEGIN
    SELECT * INTO s FROM eav.steps
    WHERE id = p_step_id AND claim_epoch = p_epoch AND state = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        -- Let complete() tell a repeat from a stale epoch, and audit it.
        SELECT c.status INTO v_status FROM eav.complete(p_actor, ARRAY[p_step_id],
            ARRAY[p_epoch], ARRAY['failed'], ARRAY[NULL::jsonb], ARRAY['not running']) c;
        RETURN v_status;
    END IF;

    -- Two steps with one key (a client that enqueued twice) must not both
    -- apply it: the second waits here, then finds the first's outcome.
    PERFORM pg_advisory_xact_lock(hashtextextended(s.tool || '/' || s.idempotency_key, 0));
    SELECT * INTO o FROM eav.idempotency_outcomes
    WHERE tool = s.tool AND idempotency_key = s.idempotency_key;
    IF FOUND THEN
        PERFORM eav.audit('tool_call.deduplicated', 'success', p_actor, s.trace_id,
            s.task_id, s.id, jsonb_build_object('epoch', p_epoch,
                'outcome', o.outcome, 'recorded_by_step', o.step_id));
        SELECT c.status INTO v_status FROM eav.complete(p_actor, ARRAY[s.id],
            ARRAY[p_epoch], ARRAY[o.outcome], ARRAY[o.result], ARRAY[o.error]) c;
        RETURN v_status;
    END IF;

    BEGIN
        v_from := s.input->>'from';
        v_to := s.input->>'to';
        v_amount := (s.input->>'amount')::bigint;
    EXCEPTION WHEN data_exception THEN
        v_err := 'input.amount must be an integer';
    END;
    IF v_err IS NULL AND (v_from IS NULL OR v_to IS NULL OR v_amount IS NULL) THEN
        v_err := 'input needs "from", "to" and "amount"';
    ELSIF v_err IS NULL AND v_amount <= 0 THEN
        v_err := 'input.amount must be positive';
    ELSIF v_err IS NULL AND v_from = v_to THEN
        v_err := 'input.from and input.to must differ';
    END IF;
    IF v_err IS NULL THEN
        -- Lock both accounts in name order so two transfers cannot deadlock.
        PERFORM 1 FROM eav.ledger_accounts WHERE id IN (v_from, v_to)
        ORDER BY id FOR UPDATE;
        IF (SELECT count(*) FROM eav.ledger_accounts WHERE id IN (v_from, v_to)) <> 2 THEN
            v_err := 'unknown account';
        ELSIF (SELECT balance FROM eav.ledger_accounts WHERE id = v_from) < v_amount THEN
            v_err := 'insufficient funds';
        END IF;
    END IF;

    IF v_err IS NULL THEN
        UPDATE eav.ledger_accounts SET balance = balance - v_amount WHERE id = v_from;
        UPDATE eav.ledger_accounts SET balance = balance + v_amount WHERE id = v_to;
        INSERT INTO eav.ledger_entries (idempotency_key, step_id, from_account,
                                        to_account, amount)
        VALUES (s.idempotency_key, s.id, v_from, v_to, v_amount);
        v_result := jsonb_build_object('from', v_from, 'to', v_to, 'amount', v_amount);
    END IF;
    INSERT INTO eav.idempotency_outcomes (tool, idempotency_key, step_id,
        claim_epoch, outcome, result, error)
    VALUES (s.tool, s.idempotency_key, s.id, p_epoch,
        CASE WHEN v_err IS NULL THEN 'succeeded' ELSE 'failed' END, v_result, v_err);
    SELECT c.status INTO v_status FROM eav.complete(p_actor, ARRAY[s.id],
        ARRAY[p_epoch], ARRAY[CASE WHEN v_err IS NULL THEN 'succeeded' ELSE 'failed' END],
        ARRAY[v_result], ARRAY[v_err]) c;
    RETURN v_status;
END;
$$;
COMMENT ON FUNCTION eav.ledger_transfer(bigint, bigint, text) IS 'Runs the ledger.transfer tool for a claimed step: applies the transfer (or the outcome already recorded for its idempotency key), records the outcome and completes the step, all in one transaction.';

-- Reconciliation ------------------------------------------------------------

-- Reconciles one attempt whose owner is gone.  The guard (running, same
-- epoch) is checked under the row lock, so a completion that committed
-- first wins and this does nothing.
CREATE FUNCTION eav.reconcile_step(p_step_id bigint, p_epoch bigint,
    p_detected_by text, p_actor text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s eav.steps;
    o eav.idempotency_outcomes;
    v_idem boolean;
    v_task_state text;
    v_decision text;
    v_run_at timestamptz;
BEGIN
    SELECT * INTO s FROM eav.steps
    WHERE id = p_step_id AND claim_epoch = p_epoch AND state = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'skipped';
    END IF;

    SELECT * INTO o FROM eav.idempotency_outcomes
    WHERE tool = s.tool AND idempotency_key = s.idempotency_key;
    IF FOUND THEN
        PERFORM eav.audit('tool_call.outcome_applied', 'success', p_actor,
            s.trace_id, s.task_id, s.id, jsonb_build_object('epoch', p_epoch,
                'outcome', o.outcome, 'detected_by', p_detected_by));
        PERFORM eav.complete(p_actor, ARRAY[s.id], ARRAY[p_epoch],
            ARRAY[o.outcome], ARRAY[o.result], ARRAY[o.error]);
        RETURN 'applied';
    END IF;

    SELECT idempotent INTO v_idem FROM eav.tools WHERE name = s.tool;
    SELECT state INTO v_task_state FROM eav.tasks WHERE id = s.task_id FOR SHARE;
    -- A cancelled task runs nothing more, but an operator must still learn
    -- whether a non-idempotent call took effect: that step is held too.
    v_decision := CASE
        WHEN v_task_state <> 'active' AND coalesce(v_idem, false) THEN 'cancelled'
        WHEN v_task_state <> 'active' THEN 'held'
        WHEN coalesce(v_idem, false) AND s.attempt < s.max_attempts THEN 'retry'
        ELSE 'held' END;

    INSERT INTO eav.unknown_outcomes (step_id, claim_epoch, attempt, tool,
        owner_node, owner_incarnation, owner_pid, detected_by, decision)
    VALUES (s.id, p_epoch, s.attempt, s.tool, s.owner_node,
        s.owner_incarnation, s.owner_pid, p_detected_by, v_decision);
    PERFORM eav.audit('tool_call.unknown', 'unknown', p_actor, s.trace_id,
        s.task_id, s.id, jsonb_build_object('epoch', p_epoch,
            'attempt', s.attempt, 'tool', s.tool, 'owner_pid', s.owner_pid,
            'owner_incarnation', s.owner_incarnation,
            'detected_by', p_detected_by, 'decision', v_decision));

    IF v_decision = 'cancelled' THEN
        UPDATE eav.steps SET state = 'cancelled', finished_at = now(),
            error = 'unknown outcome', updated_at = now()
        WHERE id = s.id;
        PERFORM eav.audit('step.cancelled', 'success', p_actor, s.trace_id,
            s.task_id, s.id, '{"reason": "task is no longer active"}');
        RETURN 'cancelled';
    ELSIF v_decision = 'retry' THEN
        UPDATE eav.steps SET state = 'pending', error = 'unknown outcome',
            run_at = now() + eav.retry_delay(q.retry_base_ms, q.retry_max_ms, s.attempt),
            updated_at = now()
        FROM eav.queues q WHERE q.name = s.queue AND eav.steps.id = s.id
        RETURNING eav.steps.run_at INTO v_run_at;
        PERFORM eav.audit('step.retry_scheduled', 'unknown', p_actor, s.trace_id,
            s.task_id, s.id, jsonb_build_object('epoch', p_epoch,
                'attempt', s.attempt, 'max_attempts', s.max_attempts,
                'idempotency_key', s.idempotency_key, 'run_at', v_run_at));
        PERFORM pg_notify('eav_steps', '');
        RETURN 'retry';
    END IF;
    UPDATE eav.steps SET state = 'held', error = 'unknown outcome',
        held_reason = CASE WHEN coalesce(v_idem, false) THEN 'attempts_exhausted'
                           ELSE 'unknown_outcome' END,
        updated_at = now()
    WHERE id = s.id;
    PERFORM eav.audit('step.held', 'unknown', p_actor, s.trace_id, s.task_id, s.id,
        jsonb_build_object('epoch', p_epoch, 'attempt', s.attempt,
            'reason', CASE WHEN coalesce(v_idem, false) THEN 'attempts_exhausted'
                           ELSE 'unknown_outcome' END));
    PERFORM eav.alarm_raise('unknown_outcome_held', 'warning', 'step:' || s.id,
        format('step %s (%s) of task %s has an unknown outcome and is held; resolve it with eavctl resolve',
               s.id, s.tool, s.task_id),
        jsonb_build_object('step_id', s.id, 'task_id', s.task_id, 'tool', s.tool,
                           'epoch', p_epoch),
        p_actor);
    RETURN 'held';
END;
$$;
COMMENT ON FUNCTION eav.reconcile_step(bigint, bigint, text, text) IS 'Reconciles one orphaned attempt: applies a recorded idempotency outcome, or records an unknown outcome (tool_call.unknown) and sends the step back to pending (idempotent tool, attempts left) or holds it with an alarm.';

-- Ends database sessions and waits until they are gone, so that a claim
-- or completion a dead process had already sent has either committed or
-- rolled back before we look at its steps (a backend outlives its client
-- until it next reads from the socket).  pg_terminate_backend's own wait
-- polls every 100 ms; this polls every millisecond, and usually not at
-- all: the session of a killed client ends as soon as it reads EOF.
CREATE FUNCTION eav.end_sessions(p_pids integer[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_deadline timestamptz := clock_timestamp() + interval '5 seconds';
BEGIN
    IF coalesce(cardinality(p_pids), 0) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_terminate_backend(a.pid) FROM pg_stat_activity a
    WHERE a.pid = ANY (p_pids) AND a.pid <> pg_backend_pid();
    LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                              WHERE a.pid = ANY (p_pids)
                                AND a.pid <> pg_backend_pid());
        -- Reconciling while one lives could miss a claim it commits
        -- later: fail, and let the caller try again.
        IF clock_timestamp() > v_deadline THEN
            RAISE EXCEPTION 'database sessions % did not end within 5 s', p_pids
                USING ERRCODE = 'EA005';
        END IF;
        PERFORM pg_sleep(0.001);
    END LOOP;
    RETURN cardinality(p_pids);
END;
$$;
COMMENT ON FUNCTION eav.end_sessions(integer[]) IS 'Terminates the given backends and waits until they are gone; raises EA005 if one is still there after 5 s.';

CREATE FUNCTION eav.terminate_sessions(p_incarnations bigint[], p_keep_pids integer[])
RETURNS integer
LANGUAGE sql AS $$
    SELECT eav.end_sessions(array_agg(a.pid)) FROM pg_stat_activity a
    WHERE a.datname = current_database()
      AND a.application_name ~ '^eav-(worker|producer):[0-9]+:[0-9]+$'
      -- Compared as text: a cast would fail on a name whose numbers
      -- overflow, and any client can choose its application_name.
      AND split_part(a.application_name, ':', 2) = ANY (p_incarnations::text[])
      AND split_part(a.application_name, ':', 3)
          <> ALL (coalesce(p_keep_pids, '{}')::text[]);
$$;
COMMENT ON FUNCTION eav.terminate_sessions(bigint[], integer[]) IS 'Ends the sessions of eav workers and producers of the given incarnations, except those of the given live pids (see eav.end_sessions).';

CREATE FUNCTION eav.reconcile_worker(p_node text, p_incarnation bigint,
    p_pid integer, p_actor text DEFAULT NULL)
RETURNS TABLE (step_id bigint, decision text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_actor text := coalesce(p_actor, format('supervisor:%s/%s', p_node, p_incarnation));
    r record;
BEGIN
    PERFORM eav.end_sessions(array_agg(a.pid)) FROM pg_stat_activity a
    WHERE a.datname = current_database()
      AND a.application_name = format('eav-worker:%s:%s', p_incarnation, p_pid);
    FOR r IN
        SELECT s.id, s.claim_epoch FROM eav.steps s
        WHERE s.state = 'running' AND s.owner_incarnation = p_incarnation
          AND s.owner_pid = p_pid
        ORDER BY s.id
    LOOP
        step_id := r.id;
        decision := eav.reconcile_step(r.id, r.claim_epoch, 'worker_exit', v_actor);
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.reconcile_worker(text, bigint, integer, text) IS 'Called by eavd when it reaps a worker: ends the worker''s database session, then reconciles each of its running steps (eav.reconcile_step).';

CREATE FUNCTION eav.reconcile_incarnation(p_node text, p_incarnation bigint)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := format('supervisor:%s/%s', p_node, p_incarnation);
    v_old bigint[];
    v_n integer := 0;
    r record;
BEGIN
    SELECT array_agg(id) INTO v_old FROM eav.incarnations
    WHERE node = p_node AND id <> p_incarnation AND stopped_at IS NULL;
    SELECT array_agg(DISTINCT x ORDER BY x) INTO v_old FROM (
        SELECT unnest(v_old) AS x
        UNION
        SELECT owner_incarnation FROM eav.steps
        WHERE state = 'running' AND owner_node = p_node
          AND owner_incarnation <> p_incarnation) o;
    v_old := coalesce(v_old, '{}');
    IF cardinality(v_old) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM eav.terminate_sessions(v_old, NULL);
    FOR r IN
        SELECT s.id, s.claim_epoch FROM eav.steps s
        WHERE s.state = 'running' AND s.owner_incarnation = ANY (v_old)
        ORDER BY s.id
    LOOP
        IF eav.reconcile_step(r.id, r.claim_epoch, 'incarnation', v_actor) <> 'skipped' THEN
            v_n := v_n + 1;
        END IF;
    END LOOP;
    UPDATE eav.incarnations SET stopped_at = now(), stop_reason = 'superseded',
        reconciled_steps = v_n
    WHERE id = ANY (v_old) AND stopped_at IS NULL;
    UPDATE eav.processes SET state = 'down', pid = NULL, updated_at = now()
    WHERE node = p_node AND incarnation = ANY (v_old);
    PERFORM eav.audit('node.reconciled', CASE WHEN v_n = 0 THEN 'success' ELSE 'unknown' END,
        v_actor, NULL, NULL, NULL,
        jsonb_build_object('node', p_node, 'incarnation', p_incarnation,
                           'previous_incarnations', to_jsonb(v_old), 'steps', v_n));
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.reconcile_incarnation(text, bigint) IS 'Called by eavd at start, before any claim: ends the sessions of the node''s earlier incarnations and reconciles every step they left running. Returns the number of steps reconciled.';

CREATE FUNCTION eav.reconcile_sweep(p_node text, p_incarnation bigint,
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
                   WHERE s.state = 'running' AND s.owner_node = p_node
                     AND (s.owner_incarnation <> p_incarnation
                          OR s.owner_pid <> ALL (coalesce(p_live_pids, '{}')))) THEN
        RETURN 0;
    END IF;
    SELECT array_agg(DISTINCT owner_incarnation) INTO v_old FROM eav.steps
    WHERE state = 'running' AND owner_node = p_node
      AND owner_incarnation <> p_incarnation;
    PERFORM eav.terminate_sessions(ARRAY[p_incarnation], p_live_pids);
    IF v_old IS NOT NULL THEN
        PERFORM eav.terminate_sessions(v_old, NULL);
    END IF;
    FOR r IN
        SELECT s.id, s.claim_epoch FROM eav.steps s
        WHERE s.state = 'running' AND s.owner_node = p_node
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

CREATE FUNCTION eav.worker_resync(p_node text, p_incarnation bigint, p_pid integer,
    p_old_backend integer, p_known bigint[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := format('worker:%s/%s/%s', p_node, p_incarnation, p_pid);
    v_ids bigint[];
    v_epochs bigint[];
    v_n integer;
BEGIN
    -- The old session may still be running a claim we sent before the
    -- connection broke; end it so its outcome is settled.
    IF p_old_backend IS NOT NULL THEN
        PERFORM eav.end_sessions(array_agg(a.pid)) FROM pg_stat_activity a
        WHERE a.pid = p_old_backend
          AND a.application_name = format('eav-worker:%s:%s', p_incarnation, p_pid);
    END IF;
    SELECT array_agg(id ORDER BY id), array_agg(claim_epoch ORDER BY id)
    INTO v_ids, v_epochs
    FROM eav.steps
    WHERE state = 'running' AND owner_incarnation = p_incarnation
      AND owner_pid = p_pid AND id <> ALL (coalesce(p_known, '{}'));
    v_n := coalesce(cardinality(v_ids), 0);
    IF v_n > 0 THEN
        PERFORM eav.complete(v_actor, v_ids, v_epochs,
            array_fill('release'::text, ARRAY[v_n]),
            array_fill(NULL::jsonb, ARRAY[v_n]),
            array_fill('claim result lost with the connection; never started'::text, ARRAY[v_n]));
    END IF;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.worker_resync(text, bigint, integer, integer, bigint[]) IS 'Called by a worker after it reconnects: ends its old session, then releases the steps it owns but never saw (their claim committed while the connection broke), refunding the attempt.';

-- Operator transitions --------------------------------------------------------

CREATE FUNCTION eav.step_resolve(p_step_id bigint, p_action text,
    p_actor text DEFAULT NULL, p_note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    s eav.steps;
    v_task_state text;
BEGIN
    IF p_action IS NULL OR p_action NOT IN ('retry', 'succeeded', 'failed') THEN
        RAISE EXCEPTION 'unknown action "%"', p_action
            USING ERRCODE = '22023', HINT = 'Use retry, succeeded or failed.';
    END IF;
    -- Task before step, the order task_cancel locks in.
    SELECT t.state INTO v_task_state FROM eav.tasks t
    WHERE t.id = (SELECT task_id FROM eav.steps WHERE id = p_step_id)
    FOR SHARE;
    SELECT * INTO s FROM eav.steps WHERE id = p_step_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'step % does not exist', p_step_id USING ERRCODE = 'EA004';
    END IF;
    IF s.state <> 'held' THEN
        RAISE EXCEPTION 'step % is %, not held', p_step_id, s.state
            USING ERRCODE = 'EA003', HINT = 'Only a held step can be resolved.';
    END IF;

    IF p_action = 'retry' THEN
        UPDATE eav.steps SET state = 'pending', run_at = now(), held_reason = NULL,
            max_attempts = greatest(max_attempts, attempt + 1), updated_at = now()
        WHERE id = s.id;
        PERFORM pg_notify('eav_steps', '');
    ELSIF p_action = 'succeeded' THEN
        UPDATE eav.steps SET state = 'succeeded', held_reason = NULL,
            result = jsonb_build_object('resolved_by', v_actor, 'note', p_note),
            finished_at = now(), updated_at = now()
        WHERE id = s.id;
    ELSE
        UPDATE eav.steps SET state = 'failed', held_reason = NULL,
            error = coalesce(p_note, 'resolved as failed by ' || v_actor),
            finished_at = now(), updated_at = now()
        WHERE id = s.id;
    END IF;
    PERFORM eav.audit('step.resolved', 'success', v_actor, s.trace_id, s.task_id,
        s.id, jsonb_build_object('action', p_action, 'note', p_note,
                                 'held_reason', s.held_reason, 'epoch', s.claim_epoch));
    IF p_action <> 'retry' THEN
        PERFORM eav.advance_tasks(ARRAY[s.id], v_actor);
    END IF;
    PERFORM eav.alarm_resolve_subject('unknown_outcome_held', 'step:' || s.id, v_actor);
    RETURN p_action;
END;
$$;
COMMENT ON FUNCTION eav.step_resolve(bigint, text, text, text) IS 'Operator decision on a held step: retry (pending again, same idempotency key), succeeded (the effect happened) or failed. Audited step.resolved; resolves its alarm.';

CREATE FUNCTION eav.task_retry(p_task_id bigint, p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    t eav.tasks;
    v_first integer;
    v_held bigint;
BEGIN
    SELECT * INTO t FROM eav.tasks WHERE id = p_task_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'task % does not exist', p_task_id USING ERRCODE = 'EA004';
    END IF;
    IF t.state NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'task % is %; only a failed or cancelled task can be retried',
            p_task_id, t.state USING ERRCODE = 'EA003',
            HINT = 'A held step of an active task is resolved with eav.step_resolve.';
    END IF;
    IF EXISTS (SELECT 1 FROM eav.steps
               WHERE id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127)
                 AND state = 'running') THEN
        RAISE EXCEPTION 'task % still has a running step', p_task_id
            USING ERRCODE = 'EA003', HINT = 'Retry it when the step has finished.';
    END IF;
    SELECT min(id) INTO v_held FROM eav.steps
    WHERE id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127)
      AND state = 'held';
    IF v_held IS NOT NULL THEN
        RAISE EXCEPTION 'step % of task % has an unknown outcome and is held',
            v_held, p_task_id USING ERRCODE = 'EA003',
            HINT = 'Resolve it first (eavctl resolve): retrying could repeat its effect.';
    END IF;
    SELECT min(ordinal) INTO v_first FROM eav.steps
    WHERE id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127)
      AND state <> 'succeeded';
    IF v_first IS NULL THEN
        RAISE EXCEPTION 'task % has no unfinished step', p_task_id
            USING ERRCODE = 'EA003',
                  HINT = 'Every step succeeded (the last one after the task was cancelled).';
    END IF;
    UPDATE eav.steps SET
        state = CASE WHEN ordinal = v_first THEN 'pending' ELSE 'blocked' END,
        attempt = 0, run_at = now(), finished_at = NULL, held_reason = NULL,
        updated_at = now()
    WHERE id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127)
      AND state <> 'succeeded';
    UPDATE eav.tasks SET state = 'active', finished_at = NULL WHERE id = t.id;
    PERFORM eav.audit('task.retried', 'success', v_actor, t.trace_id, t.id, NULL,
        jsonb_build_object('previous_state', t.state, 'from_step', v_first));
    PERFORM pg_notify('eav_steps', '');
END;
$$;
COMMENT ON FUNCTION eav.task_retry(bigint, text) IS 'Re-activates a failed or cancelled task from its first unfinished step, with a fresh attempt budget (audited task.retried).';

CREATE FUNCTION eav.task_cancel(p_task_id bigint, p_actor text DEFAULT NULL,
    p_reason text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    t eav.tasks;
    v_n integer;
    v_running bigint;
BEGIN
    SELECT * INTO t FROM eav.tasks WHERE id = p_task_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'task % does not exist', p_task_id USING ERRCODE = 'EA004';
    END IF;
    IF t.state <> 'active' THEN
        RAISE EXCEPTION 'task % is already %', p_task_id, t.state USING ERRCODE = 'EA003';
    END IF;
    UPDATE eav.tasks SET state = 'cancelled', finished_at = now() WHERE id = t.id;
    WITH c AS (
        UPDATE eav.steps SET state = 'cancelled', finished_at = now(),
            held_reason = NULL, updated_at = now()
        WHERE id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127)
          AND state IN ('blocked', 'pending', 'held')
        RETURNING id
    ), a AS (
        INSERT INTO eav.audit_events (type, outcome, actor, trace_id, task_id, step_id, payload)
        SELECT 'step.cancelled', 'success', v_actor, t.trace_id, t.id, c.id,
               jsonb_build_object('reason', p_reason)
        FROM c
    )
    SELECT count(*) INTO v_n FROM c;
    SELECT id INTO v_running FROM eav.steps
    WHERE id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127)
      AND state = 'running';
    PERFORM eav.audit('task.cancelled', 'success', v_actor, t.trace_id, t.id, NULL,
        jsonb_build_object('reason', p_reason, 'steps_cancelled', v_n,
                           'running_step', v_running));
    PERFORM eav.alarm_resolve_subject('unknown_outcome_held', 'step:' || s.id, v_actor)
    FROM eav.steps s
    WHERE s.id BETWEEN eav.step_id(t.id, 1) AND eav.step_id(t.id, 127);
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.task_cancel(bigint, text, text) IS 'Cancels an active task: its blocked, pending and held steps are cancelled at once; a running step finishes its attempt but nothing runs after it. Audited task.cancelled and step.cancelled.';

-- Producer ------------------------------------------------------------------

CREATE FUNCTION eav.event_submit(p_source text, p_event_key text, p_type text,
    p_body text, p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    -- The inbox trigger audits the arrival with this actor.
    PERFORM set_config('eav.actor', coalesce(p_actor, eav.default_actor()), true);
    INSERT INTO eav.inbox (source, event_key, type, body)
    VALUES (p_source, p_event_key, p_type, p_body)
    RETURNING id INTO v_id;
    PERFORM set_config('eav.actor', '', true);
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION eav.event_submit(text, text, text, text, text) IS 'Puts an event in the inbox for eav-producer (same as an INSERT into eav.inbox, audited event.received with p_actor). Returns the event id.';

CREATE FUNCTION eav.inbox_audit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO eav.audit_events (type, outcome, actor, payload)
    SELECT 'event.received', 'success',
           coalesce(nullif(current_setting('eav.actor', true), ''),
                    eav.default_actor()),
           jsonb_build_object('event_id', n.id, 'source', n.source,
                              'event_key', n.event_key, 'type', n.type,
                              'bytes', octet_length(n.body))
    FROM new_events n;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION eav.inbox_audit() IS 'Audits every event put in the inbox (event.received), whoever inserted it.';

CREATE TRIGGER inbox_audit AFTER INSERT ON eav.inbox
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION eav.inbox_audit();

CREATE FUNCTION eav.inbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('eav_inbox', '');
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION eav.inbox_notify() IS 'Wakes eav-producer when events are inserted.';

CREATE TRIGGER inbox_notify AFTER INSERT ON eav.inbox
    FOR EACH STATEMENT EXECUTE FUNCTION eav.inbox_notify();

-- Turns one inbox event into a task, or rejects it.  Runs inside an
-- exception block of the caller, so a rejection leaves nothing behind but
-- the rejection itself.
CREATE FUNCTION eav.event_route(e eav.inbox, p_actor text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_body jsonb;
    v_field text;
    v_cap bigint := eav.setting('max_event_bytes');
BEGIN
    IF octet_length(e.body) > v_cap THEN
        RAISE EXCEPTION 'event body is % bytes, more than the limit of % bytes',
            octet_length(e.body), v_cap USING ERRCODE = '54000';
    END IF;
    BEGIN
        v_body := e.body::jsonb;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'event body is not valid JSON: %', SQLERRM
            USING ERRCODE = '22023';
    END;
    IF e.type <> 'task' THEN
        RAISE EXCEPTION 'no route for event type "%"', e.type
            USING ERRCODE = '22023', HINT = 'Only type "task" is routed.';
    END IF;
    IF jsonb_typeof(v_body) <> 'object' THEN
        RAISE EXCEPTION 'event body must be a JSON object' USING ERRCODE = '22023';
    END IF;
    SELECT k INTO v_field FROM jsonb_object_keys(v_body) AS k
    WHERE k NOT IN ('queue', 'kind', 'steps') ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown field "%" in event body', v_field
            USING ERRCODE = '22023', HINT = 'Known fields: queue, kind, steps.';
    END IF;
    IF v_body ? 'queue' AND jsonb_typeof(v_body->'queue') <> 'string'
       OR jsonb_typeof(v_body->'kind') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'event body needs "kind" (a string) and an optional "queue" (a string)'
            USING ERRCODE = '22023';
    END IF;
    RETURN eav.task_enqueue(coalesce(v_body->>'queue', 'default'), v_body->>'kind',
        v_body->'steps', p_actor, p_event_id => e.id);
END;
$$;
COMMENT ON FUNCTION eav.event_route(eav.inbox, text) IS 'Validates an inbox event and creates its task (type "task": body {"queue", "kind", "steps"}); raises on a malformed event.';

CREATE FUNCTION eav.inbox_ingest(p_limit integer, p_actor text)
RETURNS TABLE (event_id bigint, state text, task_id bigint, error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    e eav.inbox;
    v_task bigint;
    v_dup bigint;
BEGIN
    FOR e IN
        SELECT * FROM eav.inbox i WHERE i.state = 'new' ORDER BY i.id
        LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        event_id := e.id;
        task_id := NULL;
        error := NULL;
        BEGIN
            -- Claim the key first: a concurrent producer with the same key
            -- waits here and then sees it taken.
            INSERT INTO eav.event_keys (source, event_key, event_id)
            VALUES (e.source, e.event_key, e.id)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                SELECT k.task_id INTO v_dup FROM eav.event_keys k
                WHERE k.source = e.source AND k.event_key = e.event_key;
                UPDATE eav.inbox SET state = 'deduped', processed_at = now(),
                    task_id = v_dup WHERE id = e.id;
                PERFORM eav.audit('event.deduped', 'success', p_actor, NULL, v_dup,
                    NULL, jsonb_build_object('event_id', e.id, 'source', e.source,
                                             'event_key', e.event_key));
                state := 'deduped';
                task_id := v_dup;
            ELSE
                v_task := eav.event_route(e, p_actor);
                UPDATE eav.event_keys SET task_id = v_task
                WHERE source = e.source AND event_key = e.event_key;
                UPDATE eav.inbox SET state = 'accepted', processed_at = now(),
                    task_id = v_task WHERE id = e.id;
                PERFORM eav.audit('event.ingested', 'success', p_actor, NULL, v_task,
                    NULL, jsonb_build_object('event_id', e.id, 'source', e.source,
                                             'event_key', e.event_key, 'type', e.type));
                state := 'accepted';
                task_id := v_task;
            END IF;
        EXCEPTION
            WHEN data_exception OR integrity_constraint_violation
                 OR program_limit_exceeded OR invalid_parameter_value THEN
                error := SQLERRM;
                UPDATE eav.inbox SET state = 'rejected', processed_at = now(),
                    error = SQLERRM WHERE id = e.id;
                PERFORM eav.audit('event.ingested', 'failure', p_actor, NULL, NULL,
                    NULL, jsonb_build_object('event_id', e.id, 'source', e.source,
                                             'event_key', e.event_key, 'type', e.type,
                                             'error', SQLERRM));
                state := 'rejected';
        END;
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION eav.inbox_ingest(integer, text) IS 'Producer step: takes up to p_limit new inbox events (SKIP LOCKED) and, for each, dedupes on (source, event_key) (event.deduped), creates its task (event.ingested success) or rejects it with the reason (event.ingested failure). The caller commits; a crash before COMMIT loses nothing and duplicates nothing.';

CREATE FUNCTION eav.demo_emit(p_n integer, p_actor text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
BEGIN
    IF p_n IS NULL OR p_n NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'demo_emit takes 1 to 10000 events' USING ERRCODE = '22023';
    END IF;
    PERFORM set_config('eav.actor', coalesce(p_actor, eav.default_actor()), true);
    WITH r AS (
        SELECT random() AS x, (ARRAY['alice', 'bob', 'carol', 'dave'])[1 + floor(random() * 4)::int] AS a,
               (ARRAY['alice', 'bob', 'carol', 'dave'])[1 + floor(random() * 4)::int] AS b
        FROM generate_series(1, p_n)
    ), ev AS (
        SELECT CASE
            WHEN x < 0.50 THEN jsonb_build_object('queue', 'demo', 'kind', 'demo.noop',
                'steps', jsonb_build_array(jsonb_build_object('tool', 'noop')))
            WHEN x < 0.65 THEN jsonb_build_object('queue', 'demo', 'kind', 'demo.sleep',
                'steps', jsonb_build_array(jsonb_build_object('tool', 'sleep',
                    'input', jsonb_build_object('ms', 100 + floor(random() * 1900)::int))))
            WHEN x < 0.87 THEN jsonb_build_object('queue', 'demo', 'kind', 'demo.payment',
                'steps', jsonb_build_array(
                    jsonb_build_object('tool', 'ledger.transfer', 'input',
                        jsonb_build_object('from', a,
                            'to', CASE WHEN a <> b THEN b WHEN a = 'alice' THEN 'bob' ELSE 'alice' END,
                            'amount', 1 + floor(random() * 100)::int)),
                    jsonb_build_object('tool', 'demo.notify',
                        'input', jsonb_build_object('ms', 200 + floor(random() * 800)::int))))
            WHEN x < 0.95 THEN jsonb_build_object('queue', 'demo', 'kind', 'demo.report',
                'steps', jsonb_build_array(
                    jsonb_build_object('tool', 'sleep', 'input', jsonb_build_object('ms', 300)),
                    jsonb_build_object('tool', 'noop')))
            ELSE jsonb_build_object('queue', 'demo', 'kind', 'demo.flaky',
                'steps', jsonb_build_array(jsonb_build_object('tool', 'fail',
                    'max_attempts', 3,
                    'input', jsonb_build_object('retryable', true,
                                                'message', 'demo: upstream timed out'))))
            END AS body
        FROM r
    )
    INSERT INTO eav.inbox (source, event_key, type, body)
    SELECT 'demo', gen_random_uuid()::text, 'task', body::text FROM ev;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    PERFORM set_config('eav.actor', '', true);
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION eav.demo_emit(integer, text) IS 'Inserts p_n demo events into the inbox: a mix of noop, sleep, ledger.transfer followed by demo.notify (non-idempotent), a two-step report and a failing flaky call.';
