-- 0007_exec_tool: the exec tool kind (a program run by eav-worker, input
-- JSON on stdin, result JSON on stdout), and the outcome "unknown" a
-- worker reports itself when a call it made ended without telling whether
-- it took effect (the program timed out or was killed by a signal).
--
-- An unknown outcome reported by a worker goes through the very logic that
-- reconciles a dead worker's step: one row in eav.unknown_outcomes per
-- (step, epoch), tool_call.unknown, then back to pending with the same
-- idempotency key (idempotent tool, attempts left) or held with an alarm.

-- Tool configuration --------------------------------------------------------

ALTER TABLE eav.unknown_outcomes
    DROP CONSTRAINT unknown_outcomes_detected_by_check;
ALTER TABLE eav.unknown_outcomes
    ADD CONSTRAINT unknown_outcomes_detected_by_check
    CHECK (detected_by IN ('worker_exit', 'incarnation', 'sweep',
                           'tool_timeout', 'tool_signal'));
COMMENT ON COLUMN eav.unknown_outcomes.detected_by IS 'worker_exit (eavd reaped the worker), incarnation (a new eavd found it at start), sweep (periodic check of live workers), tool_timeout (the worker killed a call that ran past the tool''s timeout_ms) or tool_signal (the called program was killed by a signal).';
ALTER TABLE eav.unknown_outcomes ADD COLUMN reason text;
COMMENT ON COLUMN eav.unknown_outcomes.reason IS 'What the worker saw, for outcomes it reported itself (e.g. "timed out after 5000 ms"); NULL when the owner died.';

COMMENT ON COLUMN eav.tools.config IS 'Kind-specific configuration. builtin: {"builtin": "noop"|"sleep"|"fail"|"ledger.transfer"}. exec: {"argv": ["/abs/program", "arg", ...], "env": ["NAME", ...], "max_output_bytes": n, "rlimits": {"cpu_s": n, "as_mb": n, "nofile": n}} (see eav.exec_config_check).';
COMMENT ON COLUMN eav.tools.max_output_bytes IS 'Largest result kept from a call (for exec tools, config.max_output_bytes: a larger output fails the call).';

-- Checks one integer field of an exec config; returns it (NULL if absent).
CREATE FUNCTION eav.exec_config_int(p_obj jsonb, p_key text, p_path text,
    p_min bigint, p_max bigint)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v numeric;
BEGIN
    IF NOT p_obj ? p_key THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_obj->p_key) = 'number' THEN
        v := (p_obj->>p_key)::numeric;
    END IF;
    IF v IS NULL OR v <> trunc(v) OR v < p_min OR v > p_max THEN
        RAISE EXCEPTION 'exec tool config: "%" must be an integer from % to %, not %',
            p_path, p_min, p_max, left((p_obj->p_key)::text, 40)
            USING ERRCODE = '22023';
    END IF;
    RETURN v::bigint;
END;
$$;
COMMENT ON FUNCTION eav.exec_config_int(jsonb, text, text, bigint, bigint) IS 'Validates an optional integer field of an exec tool config (22023 naming the field).';

-- Refuses the first key of p_obj that is not in p_known.
CREATE FUNCTION eav.exec_config_keys(p_obj jsonb, p_known text[], p_where text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_field text;
BEGIN
    SELECT p_where || k INTO v_field FROM jsonb_object_keys(p_obj) AS k
    WHERE k <> ALL (p_known) ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'exec tool config: unknown field "%"', v_field
            USING ERRCODE = '22023',
                  HINT = 'Known fields: ' || array_to_string(p_known, ', ') || '.';
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.exec_config_keys(jsonb, text[], text) IS 'Refuses (22023) a field of an exec tool config object that is not among the known ones.';

-- The bounds: argv and env are copied into every call, so they are kept
-- small; an output cap of 1 MiB is what one step's result may hold.
CREATE FUNCTION eav.exec_config_check(p_config jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_argv jsonb := p_config->'argv';
    v_env jsonb := coalesce(p_config->'env', '[]');
    v_rl jsonb := coalesce(p_config->'rlimits', '{}');
    v_bad text;
    v_n bigint;
BEGIN
    IF jsonb_typeof(p_config) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'exec tool config must be a JSON object' USING ERRCODE = '22023';
    END IF;
    PERFORM eav.exec_config_keys(p_config,
        ARRAY['argv', 'env', 'max_output_bytes', 'rlimits'], '');
    -- One condition per IF: SQL does not promise to evaluate an OR left
    -- to right, and the element functions fail on what is not an array.
    IF jsonb_typeof(v_argv) IS DISTINCT FROM 'array' THEN
        v_argv := '[]';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(v_argv) a
               WHERE jsonb_typeof(a) <> 'string') THEN
        v_argv := '[]';
    END IF;
    IF jsonb_array_length(v_argv) NOT BETWEEN 1 AND 64
       OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(v_argv) a
                  WHERE octet_length(a) NOT BETWEEN 1 AND 4096) THEN
        RAISE EXCEPTION 'exec tool config: "argv" must be an array of 1 to 64 non-empty strings of at most 4096 bytes'
            USING ERRCODE = '22023',
                  HINT = 'The program runs without a shell: {"argv": ["/usr/local/bin/tool", "--flag"]}.';
    END IF;
    IF left(v_argv->>0, 1) <> '/' THEN
        RAISE EXCEPTION 'exec tool config: "argv[0]" must be an absolute path, not "%"',
            left(v_argv->>0, 200) USING ERRCODE = '22023',
            HINT = 'No PATH lookup is done: name the program by its full path.';
    END IF;
    IF jsonb_typeof(v_env) <> 'array' THEN
        v_env := '[null]';
    END IF;
    IF jsonb_array_length(v_env) > 64
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(v_env) e
                  WHERE jsonb_typeof(e) <> 'string') THEN
        RAISE EXCEPTION 'exec tool config: "env" must be an array of at most 64 variable names'
            USING ERRCODE = '22023';
    END IF;
    SELECT e INTO v_bad FROM jsonb_array_elements_text(v_env) e
    WHERE e !~ '^[A-Za-z_][A-Za-z0-9_]{0,127}$' ORDER BY e LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'exec tool config: "env" entry "%" is not a variable name',
            left(v_bad, 200)
            USING ERRCODE = '22023';
    END IF;
    -- EAV_* are eav's own (EAV_DSN holds the database's credentials; the
    -- EAV_* of a call are set by the worker); PGPASSWORD and PGPASSFILE
    -- are database credentials.
    SELECT e INTO v_bad FROM jsonb_array_elements_text(v_env) e
    WHERE upper(e) LIKE 'EAV\_%' OR upper(e) IN ('PGPASSWORD', 'PGPASSFILE')
    ORDER BY e LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'exec tool config: "env" must not pass "%" to a tool', v_bad
            USING ERRCODE = '22023',
                  HINT = 'EAV_* variables and database passwords never reach a tool.';
    END IF;
    SELECT e INTO v_bad FROM jsonb_array_elements_text(v_env) e
    GROUP BY e HAVING count(*) > 1 ORDER BY e LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'exec tool config: "env" names "%" twice', v_bad
            USING ERRCODE = '22023';
    END IF;
    v_n := coalesce(eav.exec_config_int(p_config, 'max_output_bytes',
        'max_output_bytes', 1, 1048576), 65536);
    IF jsonb_typeof(v_rl) <> 'object' THEN
        RAISE EXCEPTION 'exec tool config: "rlimits" must be an object'
            USING ERRCODE = '22023';
    END IF;
    PERFORM eav.exec_config_keys(v_rl, ARRAY['as_mb', 'cpu_s', 'nofile'],
        'rlimits.');
    RETURN jsonb_build_object('argv', v_argv, 'env', v_env,
        'max_output_bytes', v_n,
        'rlimits', jsonb_strip_nulls(jsonb_build_object(
            'cpu_s', eav.exec_config_int(v_rl, 'cpu_s', 'rlimits.cpu_s', 1, 86400),
            'as_mb', eav.exec_config_int(v_rl, 'as_mb', 'rlimits.as_mb', 16, 1048576),
            'nofile', eav.exec_config_int(v_rl, 'nofile', 'rlimits.nofile', 3, 65536))));
END;
$$;
COMMENT ON FUNCTION eav.exec_config_check(jsonb) IS 'Validates an exec tool config and returns it with defaults filled in: argv (1-64 strings, argv[0] an absolute path), env (names passed from eavd''s environment; never EAV_* or PGPASSWORD/PGPASSFILE), max_output_bytes (1 to 1048576, default 65536), rlimits (cpu_s 1-86400, as_mb 16-1048576, nofile 3-65536). Raises 22023 naming the field.';

CREATE OR REPLACE FUNCTION eav.tool_register(p_name text, p_kind text, p_config jsonb,
    p_idempotent boolean, p_timeout_ms integer DEFAULT 30000,
    p_description text DEFAULT '', p_actor text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_existed boolean;
    v_config jsonb := p_config;
    v_max_output integer := 65536;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid tool name "%"', p_name
            USING ERRCODE = '22023',
                  HINT = 'Use lowercase letters, digits, _ . -; start with a letter; at most 63 characters.';
    END IF;
    IF p_kind IS NULL OR p_kind NOT IN ('builtin', 'exec') THEN
        RAISE EXCEPTION 'tool kind "%" is not supported', p_kind
            USING ERRCODE = '22023', HINT = 'Supported kinds: builtin, exec.';
    END IF;
    IF p_kind = 'exec' THEN
        v_config := eav.exec_config_check(p_config);
        v_max_output := (v_config->>'max_output_bytes')::integer;
    ELSIF p_config IS NULL OR jsonb_typeof(p_config) <> 'object'
       OR (p_config->>'builtin') IS NULL
       OR (p_config->>'builtin') NOT IN ('noop', 'sleep', 'fail', 'ledger.transfer') THEN
        RAISE EXCEPTION 'builtin tool config must be {"builtin": "noop"|"sleep"|"fail"|"ledger.transfer"}'
            USING ERRCODE = '22023';
    ELSIF (SELECT count(*) FROM jsonb_object_keys(p_config)) <> 1 THEN
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
    INSERT INTO eav.tools (name, kind, config, idempotent, timeout_ms,
                           max_output_bytes, description)
    VALUES (p_name, p_kind, v_config, p_idempotent, p_timeout_ms, v_max_output,
            coalesce(p_description, ''))
    ON CONFLICT (name) DO UPDATE
        SET kind = EXCLUDED.kind, config = EXCLUDED.config,
            idempotent = EXCLUDED.idempotent, timeout_ms = EXCLUDED.timeout_ms,
            max_output_bytes = EXCLUDED.max_output_bytes,
            description = EXCLUDED.description, updated_at = now();
    PERFORM eav.audit(CASE WHEN v_existed THEN 'tool.updated' ELSE 'tool.registered' END,
        'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('tool', p_name, 'kind', p_kind, 'config', v_config,
                           'idempotent', p_idempotent, 'timeout_ms', p_timeout_ms));
END;
$$;
COMMENT ON FUNCTION eav.tool_register(text, text, jsonb, boolean, integer, text, text) IS 'Registers or changes a builtin or exec tool (exec configs: eav.exec_config_check). Audited tool.registered / tool.updated; a refused registration stores nothing.';

-- Unknown outcomes ------------------------------------------------------------

-- The body of eav.reconcile_step (0002), with the reason a worker gives
-- when it reports the outcome itself.  The guard (running, same epoch) is
-- checked under the row lock, so whichever of the worker's report and a
-- reconcile comes second does nothing.
CREATE FUNCTION eav.step_unknown(p_step_id bigint, p_epoch bigint,
    p_detected_by text, p_actor text, p_reason text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s eav.steps;
    o eav.idempotency_outcomes;
    v_idem boolean;
    v_task_state text;
    v_decision text;
    v_run_at timestamptz;
    v_error text := 'unknown outcome' || coalesce(': ' || p_reason, '');
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
        owner_node, owner_incarnation, owner_pid, detected_by, decision, reason)
    VALUES (s.id, p_epoch, s.attempt, s.tool, s.owner_node,
        s.owner_incarnation, s.owner_pid, p_detected_by, v_decision, p_reason);
    PERFORM eav.audit('tool_call.unknown', 'unknown', p_actor, s.trace_id,
        s.task_id, s.id, jsonb_strip_nulls(jsonb_build_object('epoch', p_epoch,
            'attempt', s.attempt, 'tool', s.tool, 'owner_pid', s.owner_pid,
            'owner_incarnation', s.owner_incarnation,
            'detected_by', p_detected_by, 'decision', v_decision,
            'reason', p_reason)));

    IF v_decision = 'cancelled' THEN
        UPDATE eav.steps SET state = 'cancelled', finished_at = now(),
            error = v_error, updated_at = now()
        WHERE id = s.id;
        PERFORM eav.audit('step.cancelled', 'success', p_actor, s.trace_id,
            s.task_id, s.id, '{"reason": "task is no longer active"}');
        RETURN 'cancelled';
    ELSIF v_decision = 'retry' THEN
        UPDATE eav.steps SET state = 'pending', error = v_error,
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
    UPDATE eav.steps SET state = 'held', error = v_error,
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
COMMENT ON FUNCTION eav.step_unknown(bigint, bigint, text, text, text) IS 'Records the unknown outcome of a running attempt (guarded by state and epoch): applies a recorded idempotency outcome, or records eav.unknown_outcomes and tool_call.unknown and sends the step back to pending (idempotent tool, attempts left) or holds it with an alarm. Returns applied, retry, held, cancelled or skipped.';

CREATE OR REPLACE FUNCTION eav.reconcile_step(p_step_id bigint, p_epoch bigint,
    p_detected_by text, p_actor text)
RETURNS text
LANGUAGE sql AS $$
    SELECT eav.step_unknown(p_step_id, p_epoch, p_detected_by, p_actor, NULL);
$$;
COMMENT ON FUNCTION eav.reconcile_step(bigint, bigint, text, text) IS 'Reconciles one orphaned attempt (eav.step_unknown with no reason): applies a recorded idempotency outcome, or records an unknown outcome (tool_call.unknown) and sends the step back to pending (idempotent tool, attempts left) or holds it with an alarm.';

-- A worker's own report of an unknown outcome.  A report that finds the
-- attempt closed is a repeat (its first commit's acknowledgement was lost)
-- if this very report was recorded, and stale otherwise: then audited
-- fence.rejected, like a stale completion.
CREATE FUNCTION eav.complete_unknown(p_actor text, p_step_id bigint,
    p_epoch bigint, p_detected_by text, p_reason text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    s eav.steps;
BEGIN
    IF p_detected_by IS NULL OR p_detected_by NOT IN ('tool_timeout', 'tool_signal') THEN
        RAISE EXCEPTION 'an unknown outcome needs detected_by tool_timeout or tool_signal, not %',
            coalesce(p_detected_by, 'null') USING ERRCODE = '22023';
    END IF;
    v_status := eav.step_unknown(p_step_id, p_epoch, p_detected_by, p_actor, p_reason);
    IF v_status <> 'skipped' THEN
        RETURN v_status;
    END IF;
    IF EXISTS (SELECT 1 FROM eav.unknown_outcomes u
               WHERE u.step_id = p_step_id AND u.claim_epoch = p_epoch
                 AND u.detected_by = p_detected_by) THEN
        RETURN 'already_applied';
    END IF;
    SELECT * INTO s FROM eav.steps WHERE id = p_step_id;
    PERFORM eav.audit('fence.rejected', 'refused', p_actor, s.trace_id, s.task_id,
        p_step_id, jsonb_build_object('epoch', p_epoch,
            'current_epoch', s.claim_epoch, 'state', s.state));
    RETURN 'fenced';
END;
$$;
COMMENT ON FUNCTION eav.complete_unknown(text, bigint, bigint, text, text) IS 'A worker reports that its call''s outcome is unknown (tool_timeout, tool_signal): eav.step_unknown for that epoch. Returns its decision, already_applied for a repeat, or fenced (audited fence.rejected) if the attempt was closed otherwise.';

CREATE OR REPLACE FUNCTION eav.complete_batch(p_actor text, p_batch jsonb)
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
    e jsonb;
BEGIN
    -- Unknown outcomes are not completions: each is one guarded
    -- eav.complete_unknown, like a reconcile.
    FOR e IN SELECT x FROM jsonb_array_elements(p_batch) AS a(x)
             WHERE x->>'outcome' = 'unknown'
    LOOP
        step_id := (e->>'id')::bigint;
        status := eav.complete_unknown(p_actor, step_id, (e->>'epoch')::bigint,
            e->>'detected_by', e->>'error');
        RETURN NEXT;
    END LOOP;
    SELECT array_agg((e->>'id')::bigint ORDER BY n),
           array_agg((e->>'epoch')::bigint ORDER BY n),
           array_agg(e->>'outcome' ORDER BY n),
           array_agg(CASE WHEN jsonb_typeof(e->'result') <> 'null'
                          THEN e->'result' END ORDER BY n),
           array_agg(e->>'error' ORDER BY n)
    INTO v_ids, v_epochs, v_outcomes, v_results, v_errors
    FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS a(e, n)
    WHERE e->>'outcome' IS DISTINCT FROM 'unknown';
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT c.step_id, c.status FROM eav.complete(p_actor, v_ids,
        v_epochs, v_outcomes, v_results, v_errors) c;
END;
$$;
COMMENT ON FUNCTION eav.complete_batch(text, jsonb) IS 'eav.complete taking one JSON array of {"id", "epoch", "outcome", "result", "error"}, as eav-worker sends it; outcome "unknown" (with "detected_by" tool_timeout or tool_signal, and the reason in "error") goes to eav.complete_unknown.';

-- Claim ---------------------------------------------------------------------

-- The claim now also returns the tool's kind and, for other kinds than
-- builtin, its configuration, so a worker's cycle stays one round trip.
DROP FUNCTION eav.complete_and_claim(text, jsonb, text, bigint, integer, integer, text[]);
DROP FUNCTION eav.claim(text, bigint, integer, integer, text[]);

CREATE FUNCTION eav.claim(p_node text, p_incarnation bigint, p_pid integer,
    p_limit integer, p_queues text[] DEFAULT NULL)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer,
    kind text, config text)
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
           t.timeout_ms, t.kind,
           CASE WHEN t.kind <> 'builtin' THEN t.config::text END
    FROM c LEFT JOIN eav.tools t ON t.name = c.tool
    ORDER BY c.id;
END;
$$;
COMMENT ON FUNCTION eav.claim(text, bigint, integer, integer, text[]) IS 'Claims up to p_limit runnable steps (FOR UPDATE SKIP LOCKED) for a worker: state running, epoch and attempt + 1, owner set, step.claimed audited. Each row carries what the worker needs to call the tool (builtin name, or kind and config). Refused (EA002) for a superseded incarnation.';

CREATE FUNCTION eav.complete_and_claim(p_actor text, p_batch jsonb,
    p_node text, p_incarnation bigint, p_pid integer, p_limit integer,
    p_queues text[] DEFAULT NULL)
RETURNS TABLE (step_id bigint, task_id bigint, claim_epoch bigint,
    attempt integer, tool text, builtin text, input text,
    idempotency_key text, trace_id uuid, timeout_ms integer, status text,
    kind text, config text)
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
           c.status, NULL::text, NULL::text
    FROM eav.complete_batch(p_actor, p_batch) c
    WHERE c.status IN ('fenced', 'already_applied');
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT c.step_id, c.task_id, c.claim_epoch, c.attempt, c.tool,
               c.builtin, c.input, c.idempotency_key, c.trace_id,
               c.timeout_ms, 'claimed'::text, c.kind, c.config
        FROM eav.claim(p_node, p_incarnation, p_pid, p_limit, p_queues) c;
    END IF;
END;
$$;
COMMENT ON FUNCTION eav.complete_and_claim(text, jsonb, text, bigint, integer, integer, text[]) IS 'A worker''s cycle in one transaction: completes a batch (eav.complete_batch; rows with status fenced or already_applied report completions that did not apply) and, if p_limit > 0, claims up to p_limit steps (rows with status claimed, with the tool''s kind and config).';
