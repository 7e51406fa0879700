-- 0010_kill_switch: a kill switch (global, per queue, per tool) that the
-- claim and the producer check atomically, and one running call per
-- client idempotency key.
--
-- Atomic: engaging takes an exclusive advisory lock that every claim and
-- every producer batch holds shared until it commits, and they read the
-- switches only after taking it.  So an engage waits for the claims in
-- flight, and no claim that commits after it can have missed it.  A claim
-- pays one uncontended shared lock, not a row lock every worker fights for.

CREATE TABLE eav.kill_switches (
    scope      text NOT NULL CHECK (scope IN ('global', 'queue', 'tool')),
    target     text NOT NULL DEFAULT '',
    engaged    boolean NOT NULL,
    generation bigint NOT NULL,
    reason     text NOT NULL,
    changed_by text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, target),
    CHECK ((scope = 'global') = (target = ''))
);
COMMENT ON TABLE eav.kill_switches IS 'Kill switches: while one is engaged no step of its scope is claimed and the producer creates no task in it. Changed only through eav.kill_switch_engage and eav.kill_switch_release (audited, NOTIFY eav_kill_switch).';
COMMENT ON COLUMN eav.kill_switches.scope IS 'global (everything), queue or tool.';
COMMENT ON COLUMN eav.kill_switches.target IS 'The queue or tool; empty for global.';
COMMENT ON COLUMN eav.kill_switches.engaged IS 'True while engaged.';
COMMENT ON COLUMN eav.kill_switches.generation IS 'Value of eav.kill_switch_generation at the last change; processes report the generation they saw (kill_switch.observed).';
COMMENT ON COLUMN eav.kill_switches.reason IS 'Reason given at the last change.';
COMMENT ON COLUMN eav.kill_switches.changed_by IS 'Actor of the last change.';
COMMENT ON COLUMN eav.kill_switches.changed_at IS 'When it last changed.';

CREATE SEQUENCE eav.kill_switch_generation;
COMMENT ON SEQUENCE eav.kill_switch_generation IS 'Counts kill switch changes.';

CREATE FUNCTION eav.kill_switch_lock_id() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 6652246001::bigint $$;
COMMENT ON FUNCTION eav.kill_switch_lock_id() IS 'Advisory lock key: held shared by claims and producer batches, exclusive by a kill switch change.';

-- The engaged switches, read after the shared lock is held.
CREATE FUNCTION eav.kill_switch_scopes(OUT p_all boolean, OUT p_queues text[],
    OUT p_tools text[])
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- The lock-then-read argument needs a snapshot per statement.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'claims and ingest need READ COMMITTED, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25000';
    END IF;
    SELECT coalesce(bool_or(k.scope = 'global'), false),
           array_agg(k.target) FILTER (WHERE k.scope = 'queue'),
           array_agg(k.target) FILTER (WHERE k.scope = 'tool')
    INTO p_all, p_queues, p_tools
    FROM eav.kill_switches k WHERE k.engaged;
END;
$$;
COMMENT ON FUNCTION eav.kill_switch_scopes() IS 'What the engaged kill switches stop: everything, these queues, these tools (NULL: none).';

CREATE FUNCTION eav.kill_switch_check(p_scope text, p_target text,
    p_reason text, p_actor text)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_scope IS NULL OR p_scope NOT IN ('global', 'queue', 'tool') THEN
        RAISE EXCEPTION 'kill switch scope must be global, queue or tool'
            USING ERRCODE = '22023';
    END IF;
    IF p_scope = 'global' AND coalesce(p_target, '') <> '' THEN
        RAISE EXCEPTION 'the global kill switch takes no target'
            USING ERRCODE = '22023';
    END IF;
    IF p_scope <> 'global' AND coalesce(p_target, '') = '' THEN
        RAISE EXCEPTION 'a % kill switch needs the % it stops', p_scope, p_scope
            USING ERRCODE = '22023';
    END IF;
    IF p_scope = 'queue' AND NOT EXISTS (SELECT 1 FROM eav.queues
                                         WHERE name = p_target) THEN
        RAISE EXCEPTION 'no queue "%"', p_target USING ERRCODE = '22023',
            HINT = 'eav.queues lists the queues.';
    END IF;
    IF p_scope = 'tool' AND NOT EXISTS (SELECT 1 FROM eav.tools
                                        WHERE name = p_target) THEN
        RAISE EXCEPTION 'no tool "%"', p_target USING ERRCODE = '22023',
            HINT = 'eav.tools lists the tools.';
    END IF;
    IF p_reason IS NULL OR btrim(p_reason) = '' THEN
        RAISE EXCEPTION 'a kill switch change needs a reason'
            USING ERRCODE = '22023';
    END IF;
    IF length(p_reason) > 1000 THEN
        RAISE EXCEPTION 'reason is % characters, more than 1000', length(p_reason)
            USING ERRCODE = '22023';
    END IF;
    IF p_actor IS NOT NULL AND btrim(p_actor) = '' THEN
        RAISE EXCEPTION 'actor must not be empty' USING ERRCODE = '22023';
    END IF;
    RETURN CASE WHEN p_scope = 'global' THEN 'global'
                ELSE p_scope || ':' || p_target END;
END;
$$;
COMMENT ON FUNCTION eav.kill_switch_check(text, text, text, text) IS 'Validates a kill switch change (22023 naming the problem) and returns its alarm subject.';

-- Engages or releases one switch; both directions are one function so
-- the lock, the audit and the NOTIFY cannot drift apart.
CREATE FUNCTION eav.kill_switch_set(p_engage boolean, p_scope text,
    p_target text, p_reason text, p_actor text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_subject text := eav.kill_switch_check(p_scope, p_target, p_reason, p_actor);
    v_actor text := coalesce(p_actor, eav.default_actor());
    v_target text := coalesce(p_target, '');
    k eav.kill_switches;
    v_running bigint;
BEGIN
    -- Waits for every claim in flight; none can start until we commit.
    PERFORM pg_advisory_xact_lock(eav.kill_switch_lock_id());
    SELECT * INTO k FROM eav.kill_switches
    WHERE scope = p_scope AND target = v_target FOR UPDATE;
    IF FOUND AND k.engaged = p_engage THEN
        RETURN k.generation;
    END IF;
    IF NOT FOUND AND NOT p_engage THEN
        RAISE EXCEPTION 'kill switch % is not engaged', v_subject
            USING ERRCODE = 'EA003';
    END IF;
    INSERT INTO eav.kill_switches AS s (scope, target, engaged, generation,
        reason, changed_by)
    VALUES (p_scope, v_target, p_engage, nextval('eav.kill_switch_generation'),
        p_reason, v_actor)
    ON CONFLICT (scope, target) DO UPDATE
        SET engaged = EXCLUDED.engaged, generation = EXCLUDED.generation,
            reason = EXCLUDED.reason, changed_by = EXCLUDED.changed_by,
            changed_at = now()
    RETURNING * INTO k;
    -- owner_pid: through steps_running_idx, not a scan of every step.
    SELECT count(*) INTO v_running FROM eav.steps s
    WHERE s.state = 'running' AND s.owner_pid IS NOT NULL
      AND (p_scope = 'global' OR (p_scope = 'queue' AND s.queue = v_target)
           OR (p_scope = 'tool' AND s.tool = v_target));
    PERFORM eav.audit(CASE WHEN p_engage THEN 'kill_switch.engaged'
                           ELSE 'kill_switch.released' END,
        'success', v_actor, NULL, NULL, NULL,
        jsonb_build_object('scope', p_scope, 'target', v_target,
            'reason', p_reason, 'generation', k.generation,
            'running_steps', v_running));
    IF p_engage THEN
        PERFORM eav.alarm_raise('kill_switch_engaged', 'warning', v_subject,
            format('kill switch %s engaged by %s: %s', v_subject, v_actor, p_reason),
            jsonb_build_object('generation', k.generation), v_actor);
    ELSE
        PERFORM eav.alarm_resolve_subject('kill_switch_engaged', v_subject, v_actor);
    END IF;
    PERFORM pg_notify('eav_kill_switch', k.generation::text);
    RETURN k.generation;
END;
$$;
COMMENT ON FUNCTION eav.kill_switch_set(boolean, text, text, text, text) IS 'Engages or releases a kill switch (see eav.kill_switch_engage).';

CREATE FUNCTION eav.kill_switch_engage(p_scope text, p_target text,
    p_reason text, p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT eav.kill_switch_set(true, p_scope, p_target, p_reason, p_actor);
$$;
COMMENT ON FUNCTION eav.kill_switch_engage(text, text, text, text) IS 'Engages a kill switch: scope global (target NULL), queue or tool; a reason is required. Returns after every claim in flight has committed; no claim of the scope commits after it, running steps finish. Audited kill_switch.engaged, alarm kill_switch_engaged, NOTIFY eav_kill_switch. Engaging an engaged switch changes nothing. Returns the generation.';

CREATE FUNCTION eav.kill_switch_release(p_scope text, p_target text,
    p_reason text, p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT eav.kill_switch_set(false, p_scope, p_target, p_reason, p_actor);
$$;
COMMENT ON FUNCTION eav.kill_switch_release(text, text, text, text) IS 'Releases a kill switch (reason required; EA003 if it was never engaged): audited kill_switch.released, alarm resolved, NOTIFY eav_kill_switch. Returns the generation.';

-- A process reports what it saw after NOTIFY eav_kill_switch (or at
-- connect), so the audit shows that every process learned of a change.
CREATE FUNCTION eav.kill_switch_observe(p_actor text, p_seen bigint)
RETURNS TABLE (generation bigint, stopped_all boolean, scopes text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_gen bigint;
    v_scopes text;
    v_all boolean;
BEGIN
    -- Before the read: a change committed after it is then announced.
    LISTEN eav_kill_switch;
    SELECT coalesce(max(k.generation), 0),
           coalesce(bool_or(k.engaged AND k.scope = 'global'), false),
           coalesce(string_agg(CASE WHEN k.scope = 'global' THEN 'global'
                                    ELSE k.scope || ':' || k.target END,
                               ' ' ORDER BY k.scope, k.target)
                    FILTER (WHERE k.engaged), '')
    INTO v_gen, v_all, v_scopes FROM eav.kill_switches k;
    IF v_gen > coalesce(p_seen, 0) AND (p_seen IS NOT NULL OR v_scopes <> '') THEN
        PERFORM eav.audit('kill_switch.observed', 'success', p_actor, NULL, NULL,
            NULL, jsonb_build_object('generation', v_gen, 'engaged', v_scopes));
    END IF;
    RETURN QUERY SELECT v_gen, v_all, v_scopes;
END;
$$;
COMMENT ON FUNCTION eav.kill_switch_observe(text, bigint) IS 'A process listens on eav_kill_switch and reads the kill switches: the latest generation, whether everything is stopped, and the engaged switches ("global queue:q tool:t"). A generation newer than p_seen is audited kill_switch.observed (p_seen NULL, at connect: only if something is engaged).';

-- One running call per client key ---------------------------------------------

-- Finds the other steps with a client-given key (see the claim's "wait").
CREATE INDEX steps_client_key_idx ON eav.steps (tool, idempotency_key)
    WHERE NOT eav.key_is_derived(idempotency_key, id);

-- Claim -------------------------------------------------------------------------
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
        SELECT s.id FROM eav.steps s
        WHERE s.state = 'pending' AND s.run_at <= now()
          AND (p_queues IS NULL OR s.queue = ANY (p_queues))
          AND (v_kq IS NULL OR s.queue <> ALL (v_kq))
          AND (v_kt IS NULL OR s.tool <> ALL (v_kt))
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
               CASE
                   WHEN eav.key_is_derived(c.idempotency_key, c.id) THEN NULL
                   WHEN k.step_id <> c.id
                        AND k.fingerprint <> eav.input_fingerprint(c.tool, c.input)
                       THEN 'collision'
                   WHEN EXISTS (SELECT 1 FROM eav.idempotency_outcomes o
                                WHERE o.tool = c.tool
                                  AND o.idempotency_key = c.idempotency_key)
                       THEN 'replay'
                   -- Another step with this key is running, or comes
                   -- first and is not finished: one call per key at a
                   -- time, and the later step then finds its outcome.
                   WHEN EXISTS (SELECT 1 FROM eav.steps o
                                WHERE NOT eav.key_is_derived(o.idempotency_key, o.id)
                                  AND o.tool = c.tool
                                  AND o.idempotency_key = c.idempotency_key
                                  AND o.id <> c.id
                                  AND o.state IN ('blocked', 'pending',
                                                  'running', 'held')
                                  AND (o.state = 'running' OR o.id < c.id))
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
               END AS tool_gate
        FROM c LEFT JOIN eav.tools t ON t.name = c.tool
        LEFT JOIN eav.idempotency_keys k
               ON NOT eav.key_is_derived(c.idempotency_key, c.id)
              AND k.tool = c.tool AND k.idempotency_key = c.idempotency_key
    )
    SELECT g.id, g.task_id, g.claim_epoch, g.attempt, g.tool, g.builtin,
           g.input::text, g.idempotency_key, g.trace_id, g.timeout_ms, g.kind,
           g.config, coalesce(g.key_gate, g.tool_gate)
    FROM g ORDER BY g.id;
END;
$$;
COMMENT ON FUNCTION eav.claim(text, bigint, integer, integer, text[]) IS 'Claims up to p_limit runnable steps (FOR UPDATE SKIP LOCKED) for a worker: state running, epoch and attempt + 1, owner set, step.claimed audited. Nothing of a kill switch''s scope is claimed (eav.kill_switch_engage). Each row carries what the worker needs to call the tool (builtin name, or kind and config) and its gate: NULL (call), defer (rate limited or unavailable: eav.step_defer), fail (unavailable, fail fast), replay (recorded outcome: eav.step_replay), collision (eav.step_collision) or wait (another step with the same client key is running or comes first: deferred). Refused (EA002) for a superseded incarnation.';


-- Producer ----------------------------------------------------------------------

CREATE FUNCTION eav.event_is_killed(e eav.inbox, p_queues text[], p_tools text[])
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_body jsonb;
BEGIN
    BEGIN
        v_body := e.body::jsonb;
    EXCEPTION WHEN data_exception THEN
        RETURN false;           -- eav.event_route rejects it
    END;
    IF jsonb_typeof(v_body) <> 'object' THEN
        RETURN false;
    END IF;
    IF coalesce(v_body->>'queue', 'default') = ANY (p_queues) THEN
        RETURN true;
    END IF;
    RETURN jsonb_typeof(v_body->'steps') = 'array' AND EXISTS (
        SELECT 1 FROM jsonb_array_elements(v_body->'steps') st
        WHERE jsonb_typeof(st) = 'object' AND st->>'tool' = ANY (p_tools));
END;
$$;
COMMENT ON FUNCTION eav.event_is_killed(eav.inbox, text[], text[]) IS 'True if an inbox event would create a task on one of these queues or calling one of these tools.';

CREATE OR REPLACE FUNCTION eav.inbox_ingest(p_limit integer, p_actor text)
RETURNS TABLE (event_id bigint, state text, task_id bigint, error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    e eav.inbox;
    v_task bigint;
    v_dup bigint;
    v_all boolean;
    v_kq text[];
    v_kt text[];
BEGIN
    PERFORM pg_advisory_xact_lock_shared(eav.kill_switch_lock_id());
    SELECT * INTO v_all, v_kq, v_kt FROM eav.kill_switch_scopes();
    IF v_all THEN
        RETURN;
    END IF;
    -- Events of an engaged switch's scope stay new: filtered before the
    -- row lock, so a held backlog is read but neither locked nor counted.
    FOR e IN
        SELECT * FROM eav.inbox i WHERE i.state = 'new'
          AND (v_kq IS NULL AND v_kt IS NULL
               OR NOT eav.event_is_killed(i, v_kq, v_kt))
        ORDER BY i.id LIMIT p_limit
        FOR UPDATE SKIP LOCKED
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
COMMENT ON FUNCTION eav.inbox_ingest(integer, text) IS 'Producer step: takes up to p_limit new inbox events (SKIP LOCKED) and, for each, dedupes on (source, event_key) (event.deduped), creates its task (event.ingested success) or rejects it with the reason (event.ingested failure). Events in the scope of an engaged kill switch stay new. The caller commits; a crash before COMMIT loses nothing and duplicates nothing.';

